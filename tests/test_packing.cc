// Tests of document packing: a hand-worked best-fit stream, whole documents never cut, coverage of
// every (document, position) once per epoch, shuffling, resume from a saved position,
// data-parallel ranks, and invalid positions.
#include <gtest/gtest.h>
#include <unistd.h>  // getpid: unique temp directories when test binaries run in parallel

#include <algorithm>   // std::sort
#include <cstddef>     // ptrdiff_t
#include <cstdint>     // token ids
#include <filesystem>  // temp directories
#include <functional>  // std::function
#include <map>         // (doc, position) counts
#include <span>        // answer masks for the writer
#include <string>      // paths and messages
#include <utility>     // std::pair
#include <vector>      // documents and batches

#include "common/error.h"  // cadtrain::Error
#include "common/rng.h"    // random document lengths
#include "data/dataset.h"  // DatasetWriter, Dataset
#include "data/packing.h"  // the code under test

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kVocab = 1000;

struct Doc {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;  // answer mask, one per token
};

class PackingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / fmt::format("cadtrain_packing_{}_{}", ::getpid(), info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::vector<Doc>& docs, bool with_mask) {
    const std::string path = (dir_ / name).string();
    DatasetWriterOptions options;
    options.vocab_size = kVocab;
    options.with_answer_mask = with_mask;
    options.chunk_tokens = 16;
    DatasetWriter writer(path, options);
    for (const Doc& doc : docs) {
      writer.add_document(
          doc.tokens, 0.0f,
          with_mask ? std::span<const uint8_t>(doc.mask) : std::span<const uint8_t>());
    }
    writer.finish();
    return path;
  }

  fs::path dir_;
};

Doc make_doc(std::vector<uint32_t> tokens, std::vector<uint8_t> mask = {}) {
  if (mask.empty()) mask.assign(tokens.size(), 0);
  return Doc{std::move(tokens), std::move(mask)};
}

// Lengths 0, 1 and longer than a micro-batch, among ordinary ones; tokens encode their place.
std::vector<Doc> random_docs(uint64_t seed, int n_docs) {
  Rng rng(seed);
  std::vector<Doc> docs;
  uint32_t next = 1;
  for (int d = 0; d < n_docs; ++d) {
    uint64_t length = rng.below(40);
    if (d % 7 == 3) length = 0;
    if (d % 11 == 5) length = 1;
    if (d % 13 == 9) length = 90 + rng.below(40);
    Doc doc;
    for (uint64_t i = 0; i < length; ++i) {
      doc.tokens.push_back(next++ % kVocab);
      doc.mask.push_back(static_cast<uint8_t>(rng.below(4) == 0));
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

PackerOptions options(uint64_t tokens, bool shuffle, uint64_t seed = 0) {
  PackerOptions o;
  o.tokens_per_micro_batch = tokens;
  o.shuffle = shuffle;
  o.seed = seed;
  return o;
}

void expect_same(const MicroBatch& a, const MicroBatch& b, const std::string& where) {
  SCOPED_TRACE(where);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_EQ(a.loss_mask, b.loss_mask);
  EXPECT_EQ(a.is_answer, b.is_answer);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.cu_seqlens, b.cu_seqlens);
  EXPECT_EQ(a.doc_ids, b.doc_ids);
  EXPECT_EQ(a.cut_tokens, b.cut_tokens);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The documents in the order their first tokens appear, over the first n_tokens of the stream.
std::vector<uint64_t> doc_order(Packer& packer, uint64_t n_tokens) {
  std::vector<uint64_t> order;
  uint64_t seen = 0;
  while (seen < n_tokens) {
    const MicroBatch batch = packer.next();
    for (size_t s = 0; s + 1 < batch.cu_seqlens.size() && seen < n_tokens; ++s) {
      const auto start = static_cast<size_t>(batch.cu_seqlens[s]);
      if (batch.positions[start] == 0) order.push_back(batch.doc_ids[s]);
      seen += static_cast<uint64_t>(batch.cu_seqlens[s + 1] - batch.cu_seqlens[s]);
    }
  }
  return order;
}

TEST_F(PackingTest, HandWorkedStream) {
  // Micro-batches of 8: A [10..14], an empty document, C [20], D [30..40] (longer than 8),
  // E [50..52], F [60..65]; answer-mask ones on 11, 20, 32, 39 and 40. One window holds them all.
  // Best-fit decreasing places D's first 8 tokens, F (6), A (5), D's last 3 (with A: 5 + 3 = 8),
  // E (3), C (1, with F: the tightest fit); micro-batches go out in the order of their earliest
  // document: [A, D 8..10], [C, F], [D 0..7], [E].
  const std::vector<Doc> docs = {
      make_doc({10, 11, 12, 13, 14}, {0, 1, 0, 0, 0}),
      make_doc({}),
      make_doc({20}, {1}),
      make_doc({30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40}, {0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1}),
      make_doc({50, 51, 52}),
      make_doc({60, 61, 62, 63, 64, 65}),
  };
  const Dataset dataset = Dataset::open(write("hand.h5", docs, true));
  Packer packer(dataset, options(8, false));

  const MicroBatch b0 = packer.next();
  EXPECT_EQ(b0.tokens, (std::vector<uint32_t>{10, 11, 12, 13, 14, 38, 39, 40}));
  EXPECT_EQ(b0.targets, (std::vector<uint32_t>{11, 12, 13, 14, 0, 39, 40, 0}));
  EXPECT_EQ(b0.loss_mask, (std::vector<float>{1, 1, 1, 1, 0, 1, 1, 0}));
  EXPECT_EQ(b0.is_answer, (std::vector<uint8_t>{1, 0, 0, 0, 0, 1, 1, 0}));
  EXPECT_EQ(b0.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 8, 9, 10}));
  EXPECT_EQ(b0.cu_seqlens, (std::vector<int32_t>{0, 5, 8}));
  EXPECT_EQ(b0.doc_ids, (std::vector<uint64_t>{0, 3}));
  EXPECT_EQ(b0.cut_tokens, 3u);  // D's last piece cannot see its first 8 tokens

  // The one-token C has nothing to predict; the micro-batch is 7 tokens, not padded.
  const MicroBatch b1 = packer.next();
  EXPECT_EQ(b1.tokens, (std::vector<uint32_t>{20, 60, 61, 62, 63, 64, 65}));
  EXPECT_EQ(b1.targets, (std::vector<uint32_t>{0, 61, 62, 63, 64, 65, 0}));
  EXPECT_EQ(b1.loss_mask, (std::vector<float>{0, 1, 1, 1, 1, 1, 0}));
  EXPECT_EQ(b1.is_answer, (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(b1.positions, (std::vector<int32_t>{0, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(b1.cu_seqlens, (std::vector<int32_t>{0, 1, 7}));
  EXPECT_EQ(b1.doc_ids, (std::vector<uint64_t>{2, 5}));
  EXPECT_EQ(b1.cut_tokens, 0u);

  const MicroBatch b2 = packer.next();
  EXPECT_EQ(b2.tokens, (std::vector<uint32_t>{30, 31, 32, 33, 34, 35, 36, 37}));
  EXPECT_EQ(b2.targets, (std::vector<uint32_t>{31, 32, 33, 34, 35, 36, 37, 38}));
  EXPECT_EQ(b2.loss_mask, (std::vector<float>{1, 1, 1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(b2.is_answer, (std::vector<uint8_t>{0, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(b2.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(b2.doc_ids, (std::vector<uint64_t>{3}));
  EXPECT_EQ(b2.cut_tokens, 0u);

  const MicroBatch b3 = packer.next();
  EXPECT_EQ(b3.tokens, (std::vector<uint32_t>{50, 51, 52}));
  EXPECT_EQ(b3.targets, (std::vector<uint32_t>{51, 52, 0}));
  EXPECT_EQ(b3.cu_seqlens, (std::vector<int32_t>{0, 3}));

  // The epoch ends with its last micro-batch: the position names epoch 1's first, which (no
  // shuffle) repeats epoch 0.
  const PackerPosition pos = packer.position();
  EXPECT_EQ(pos.epoch, 1u);
  EXPECT_EQ(pos.doc_cursor, 0u);
  EXPECT_EQ(pos.batch_in_window, 0u);
  EXPECT_EQ(pos.micro_batches, 4u);
  expect_same(packer.next(), b0, "epoch 1");
}

// A document that fits in a micro-batch is one sequence of one micro-batch, whole, from position
// 0; only documents longer than a micro-batch are cut, and their cut tokens are counted.
TEST_F(PackingTest, DocumentsThatFitAreNeverCut) {
  const std::vector<Doc> docs = random_docs(21, 80);
  const Dataset dataset = Dataset::open(write("whole.h5", docs, false));
  constexpr uint64_t kTokens = 48;
  Packer packer(dataset, options(kTokens, true, 5));
  std::map<uint64_t, int> sequences;  // per document
  uint64_t cut = 0;
  while (packer.position().epoch == 0) {
    const MicroBatch b = packer.next();
    cut += b.cut_tokens;
    for (size_t s = 0; s < b.doc_ids.size(); ++s) {
      const uint64_t length = docs[b.doc_ids[s]].tokens.size();
      const auto n = static_cast<uint64_t>(b.cu_seqlens[s + 1] - b.cu_seqlens[s]);
      ++sequences[b.doc_ids[s]];
      if (length <= kTokens) {
        EXPECT_EQ(n, length) << "document " << b.doc_ids[s] << " was cut";
        EXPECT_EQ(b.positions[static_cast<size_t>(b.cu_seqlens[s])], 0);
      }
    }
  }
  uint64_t expected_cut = 0;
  for (uint64_t d = 0; d < docs.size(); ++d) {
    const uint64_t length = docs[d].tokens.size();
    if (length == 0) continue;
    EXPECT_EQ(sequences[d], length <= kTokens ? 1 : static_cast<int>((length + kTokens - 1) / kTokens))
        << "document " << d << " of " << length << " tokens";
    if (length > kTokens) expected_cut += length - kTokens;
  }
  EXPECT_GT(expected_cut, 0u);  // the corpus has long documents
  EXPECT_EQ(cut, expected_cut);
}

// Lengths that pair up exactly (7 + 3, 6 + 4, 5 + 5, in an order that sequential packing would
// cut): best fit fills every micro-batch completely.
TEST_F(PackingTest, BestFitFillsMicroBatchesWherePiecesFit) {
  std::vector<Doc> docs;
  uint32_t next = 1;
  for (const uint32_t length : {7, 6, 5, 3, 4, 5, 7, 6, 4, 3}) {
    Doc doc;
    for (uint32_t i = 0; i < length; ++i) doc.tokens.push_back(next++);
    doc.mask.assign(length, 0);
    docs.push_back(doc);
  }
  const Dataset dataset = Dataset::open(write("pairs.h5", docs, false));
  Packer packer(dataset, options(10, false));
  for (int i = 0; i < 5; ++i) {
    const MicroBatch b = packer.next();
    EXPECT_EQ(b.tokens.size(), 10u) << "micro-batch " << i;
    EXPECT_EQ(b.doc_ids.size(), 2u) << "micro-batch " << i;
  }
  EXPECT_EQ(packer.position().epoch, 1u);
}

TEST_F(PackingTest, LongDocumentIsAnErrorWhenCuttingIsOff) {
  const std::vector<Doc> docs = {make_doc({1, 2, 3}), make_doc({4, 5, 6, 7, 8, 9})};
  const Dataset dataset = Dataset::open(write("long.h5", docs, false));
  PackerOptions o = options(4, false);
  o.cut_long_documents = false;
  Packer packer(dataset, o);
  const std::string message = error_of([&] { packer.next(); });
  EXPECT_NE(message.find("document 1 has 6 tokens"), std::string::npos) << message;
  EXPECT_NE(message.find(dataset.path()), std::string::npos) << message;
  o.tokens_per_micro_batch = 6;
  Packer fits(dataset, o);
  EXPECT_EQ(fits.next().tokens, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(fits.next().tokens, (std::vector<uint32_t>{4, 5, 6, 7, 8, 9}));
}

TEST_F(PackingTest, WithoutAnswerMaskNothingIsAnAnswer) {
  const Dataset dataset = Dataset::open(write("plain.h5", random_docs(3, 30), false));
  Packer packer(dataset, options(16, true, 5));
  for (int i = 0; i < 40; ++i) {
    for (const uint8_t a : packer.next().is_answer) ASSERT_EQ(a, 0);
  }
}

// Every micro-batch holds 1 to tokens_per_micro_batch tokens and is self-consistent; over one
// epoch (which ends with a micro-batch of its own) every (doc, position) appears exactly once, with the dataset's own tokens, targets, mask and answer flags.
TEST_F(PackingTest, OneEpochCoversEveryTokenOnce) {
  const std::vector<Doc> docs = random_docs(7, 60);
  const Dataset dataset = Dataset::open(write("cover.h5", docs, true));
  const uint64_t n_tokens = dataset.num_tokens();
  constexpr uint64_t kTokens = 32;
  Packer packer(dataset, options(kTokens, true, 11));
  std::map<std::pair<uint64_t, int32_t>, int> seen;
  uint64_t emitted = 0;
  while (packer.position().epoch == 0) {
    const MicroBatch b = packer.next();
    const size_t n = b.tokens.size();
    ASSERT_GE(n, 1u);
    ASSERT_LE(n, kTokens);
    ASSERT_EQ(b.targets.size(), n);
    ASSERT_EQ(b.loss_mask.size(), n);
    ASSERT_EQ(b.is_answer.size(), n);
    ASSERT_EQ(b.positions.size(), n);
    ASSERT_EQ(b.cu_seqlens.front(), 0);
    ASSERT_EQ(b.cu_seqlens.back(), static_cast<int32_t>(n));
    ASSERT_EQ(b.doc_ids.size() + 1, b.cu_seqlens.size());
    for (size_t s = 0; s < b.doc_ids.size(); ++s) {
      ASSERT_LT(b.cu_seqlens[s], b.cu_seqlens[s + 1]);
      const Doc& doc = docs[b.doc_ids[s]];
      for (int32_t i = b.cu_seqlens[s]; i < b.cu_seqlens[s + 1]; ++i, ++emitted) {
        const auto at = static_cast<size_t>(i);
        const auto p = static_cast<size_t>(b.positions[at]);
        ASSERT_LT(p, doc.tokens.size());
        if (i > b.cu_seqlens[s]) {
          ASSERT_EQ(b.positions[at], b.positions[at - 1] + 1);
        }
        EXPECT_EQ(b.tokens[at], doc.tokens[p]);
        const bool last = p + 1 == doc.tokens.size();
        EXPECT_EQ(b.targets[at], last ? 0u : doc.tokens[p + 1]);
        EXPECT_EQ(b.loss_mask[at], last ? 0.0f : 1.0f);
        EXPECT_EQ(b.is_answer[at], last ? 0 : doc.mask[p + 1]);
        ++seen[{b.doc_ids[s], b.positions[at]}];
      }
    }
  }
  EXPECT_EQ(emitted, n_tokens);
  EXPECT_EQ(seen.size(), n_tokens);
  for (const auto& [key, count] : seen) {
    EXPECT_EQ(count, 1) << "doc " << key.first << " pos " << key.second;
  }
}

// Without shuffling every epoch is the same stream, and windows follow the file: a window small
// enough to hold a few documents keeps every document within a few places of its file position.
TEST_F(PackingTest, NoShuffleRepeatsEachEpochInFileOrderWindows) {
  const std::vector<Doc> docs = random_docs(5, 40);
  const Dataset dataset = Dataset::open(write("order.h5", docs, false));
  PackerOptions o = options(24, false);
  o.window_micro_batches = 1;
  Packer packer(dataset, o);
  std::vector<MicroBatch> epoch0;
  while (packer.position().epoch == 0) epoch0.push_back(packer.next());
  for (size_t i = 0; i < epoch0.size(); ++i) {
    expect_same(packer.next(), epoch0[i], fmt::format("epoch 1 batch {}", i));
  }
  Packer again(dataset, o);
  const std::vector<uint64_t> order = doc_order(again, dataset.num_tokens());
  std::vector<uint64_t> expected;
  for (uint64_t d = 0; d < docs.size(); ++d) {
    if (!docs[d].tokens.empty()) expected.push_back(d);
  }
  std::vector<uint64_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, expected);
  for (size_t i = 0; i < order.size(); ++i) {
    const auto place = static_cast<size_t>(
        std::find(expected.begin(), expected.end(), order[i]) - expected.begin());
    EXPECT_LE(place > i ? place - i : i - place, 6u) << "document " << order[i];
  }
}

TEST_F(PackingTest, ShuffleIsDeterministicPerSeedAndEpoch) {
  const Dataset dataset = Dataset::open(write("shuffle.h5", random_docs(9, 50), true));
  const uint64_t n = dataset.num_tokens();
  Packer a(dataset, options(20, true, 42));
  Packer b(dataset, options(20, true, 42));
  Packer c(dataset, options(20, true, 43));
  for (int i = 0; i < 10; ++i) expect_same(a.next(), b.next(), fmt::format("batch {}", i));

  Packer first(dataset, options(20, true, 42));
  Packer other_seed(dataset, options(20, true, 43));
  const std::vector<uint64_t> two_epochs = doc_order(first, 2 * n);
  const std::vector<uint64_t> other = doc_order(other_seed, n);
  const size_t per_epoch = two_epochs.size() / 2;
  const std::vector<uint64_t> epoch0(two_epochs.begin(),
                                     two_epochs.begin() + static_cast<ptrdiff_t>(per_epoch));
  const std::vector<uint64_t> epoch1(two_epochs.begin() + static_cast<ptrdiff_t>(per_epoch),
                                     two_epochs.end());
  EXPECT_NE(epoch0, epoch1);
  EXPECT_NE(epoch0, other);
  std::vector<uint64_t> sorted0 = epoch0;
  std::vector<uint64_t> sorted1 = epoch1;
  std::sort(sorted0.begin(), sorted0.end());
  std::sort(sorted1.begin(), sorted1.end());
  EXPECT_EQ(sorted0, sorted1);  // both are permutations of the same documents
}

TEST_F(PackingTest, ResumeContinuesTheIdenticalStream) {
  const Dataset dataset = Dataset::open(write("resume.h5", random_docs(13, 40), true));
  for (const int k : {0, 1, 3, 17, 40}) {
    Packer original(dataset, options(24, true, 7));
    for (int i = 0; i < k; ++i) original.next();
    const PackerPosition saved = original.position();
    Packer resumed(dataset, options(24, true, 7));
    resumed.restore(saved);
    for (int i = 0; i < 12; ++i) {
      expect_same(original.next(), resumed.next(), fmt::format("k {} batch {}", k, i));
    }
  }
}

TEST_F(PackingTest, RanksInterleaveToTheSingleRankStream) {
  const Dataset dataset = Dataset::open(write("ranks.h5", random_docs(17, 40), true));
  constexpr uint32_t kWorld = 3;
  Packer single(dataset, options(16, true, 3));
  std::vector<Packer> ranks;
  for (uint32_t r = 0; r < kWorld; ++r) {
    PackerOptions o = options(16, true, 3);
    o.rank = r;
    o.world = kWorld;
    ranks.emplace_back(dataset, o);
  }
  for (int g = 0; g < 60; ++g) {
    expect_same(single.next(), ranks[static_cast<size_t>(g) % kWorld].next(),
                fmt::format("global batch {}", g));
  }
  // After the same number of steps every rank reports the same position, and it resumes every
  // rank at its own next micro-batch.
  const PackerPosition saved = ranks[1].position();
  EXPECT_EQ(saved.micro_batches, 60u);
  EXPECT_GT(saved.epoch, 0u);  // the 60 micro-batches crossed an epoch boundary
  for (uint32_t r = 0; r < kWorld; ++r) {
    const PackerPosition p = ranks[r].position();
    EXPECT_EQ(p.epoch, saved.epoch);
    EXPECT_EQ(p.doc_cursor, saved.doc_cursor);
    EXPECT_EQ(p.batch_in_window, saved.batch_in_window);
    EXPECT_EQ(p.micro_batches, saved.micro_batches);
  }
  for (uint32_t r = 0; r < kWorld; ++r) {
    PackerOptions o = options(16, true, 3);
    o.rank = r;
    o.world = kWorld;
    Packer resumed(dataset, o);
    resumed.restore(saved);
    expect_same(ranks[r].next(), resumed.next(), fmt::format("rank {} after restore", r));
  }
}

TEST_F(PackingTest, RestoreRejectsImpossiblePositions) {
  // Micro-batches of 4, windows of at least 4 tokens: [doc0 (5 tokens)] packs into 2 micro-batches
  // (its first 4 tokens, then the last one), [the empty doc1, doc2] into 1; 3 per epoch.
  const std::vector<Doc> docs = {make_doc({1, 2, 3, 4, 5}), make_doc({}), make_doc({6, 7, 8})};
  const Dataset dataset = Dataset::open(write("bad.h5", docs, false));
  PackerOptions o = options(4, false);
  o.window_micro_batches = 1;
  Packer packer(dataset, o);
  auto restore_error = [&](PackerPosition p) { return error_of([&] { packer.restore(p); }); };

  EXPECT_NE(restore_error({0, 3, 0, 0}).find("doc_cursor 3 is out of range"), std::string::npos);
  EXPECT_NE(restore_error({0, 2, 0, 2}).find("doc_cursor 2 is not the start of a packing window"),
            std::string::npos);
  EXPECT_NE(restore_error({0, 0, 2, 2}).find("batch_in_window 2 is out of range"),
            std::string::npos);
  EXPECT_NE(restore_error({0, 1, 1, 3}).find("batch_in_window 1 is out of range"),
            std::string::npos);
  EXPECT_NE(restore_error({0, 1, 0, 1}).find("micro_batches 1 does not match"), std::string::npos);
  EXPECT_NE(restore_error({3, 0, 0, 2}).find("micro_batches 2 does not match"), std::string::npos);
  EXPECT_NE(restore_error({~uint64_t{0}, 0, 0, 5}).find("micro_batches 5"), std::string::npos);
  EXPECT_NE(restore_error({0, 3, 0, 0}).find(dataset.path()), std::string::npos);

  // A failed restore leaves the packer where it was; a valid one is accepted.
  EXPECT_EQ(packer.next().tokens, (std::vector<uint32_t>{1, 2, 3, 4}));
  packer.restore({0, 1, 0, 2});
  EXPECT_EQ(packer.next().tokens, (std::vector<uint32_t>{6, 7, 8}));
  packer.restore({1, 0, 1, 4});
  EXPECT_EQ(packer.next().tokens, (std::vector<uint32_t>{5}));
}

TEST_F(PackingTest, DatasetWithoutTokensIsAnError) {
  const std::string path = write("empty.h5", {make_doc({}), make_doc({})}, false);
  const Dataset dataset = Dataset::open(path);
  Packer packer(dataset, options(4, true));
  const std::string message = error_of([&] { packer.next(); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("no tokens"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { packer.restore({}); }).find(path), std::string::npos);
}

TEST_F(PackingTest, InvalidOptionsAreErrors) {
  const Dataset dataset = Dataset::open(write("opts.h5", random_docs(1, 5), false));
  PackerOptions o = options(0, false);
  EXPECT_NE(error_of([&] { Packer p(dataset, o); }).find("tokens_per_micro_batch"),
            std::string::npos);
  o = options(8, false);
  o.rank = 2;
  o.world = 2;
  EXPECT_NE(error_of([&] { Packer p(dataset, o); }).find("rank 2 must be < world 2"),
            std::string::npos);
  o = options(8, false);
  o.window_micro_batches = 0;
  EXPECT_NE(error_of([&] { Packer p(dataset, o); }).find("window_micro_batches"),
            std::string::npos);
}

}  // namespace
}  // namespace cadtrain::data
