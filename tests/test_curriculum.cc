// Curriculum loading: pacing functions on hand-computed cases, the easy-to-hard ranking, which
// documents the packer lets into each window, determinism from the seed, exact resume, the
// data-parallel split, and the errors for a dataset it cannot order.
#include <gtest/gtest.h>
#include <unistd.h>  // getpid: unique temp directories when test binaries run in parallel

#include <algorithm>   // std::sort
#include <cmath>       // std::nanf
#include <cstdint>     // token ids
#include <filesystem>  // temp directories
#include <functional>  // std::function
#include <map>         // per-document counts
#include <memory>      // shared_ptr of the curriculum
#include <set>         // document sets
#include <string>      // paths and messages
#include <vector>      // documents and batches

#include "common/error.h"      // cadtrain::Error
#include "common/rng.h"        // random document lengths and difficulties
#include "data/curriculum.h"   // the code under test
#include "data/dataset.h"      // DatasetWriter, Dataset
#include "data/packing.h"      // the packer it steers

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

config::CurriculumConfig pacing(config::Pacing kind, double start, uint64_t full_at_step = 0) {
  config::CurriculumConfig c;
  c.set_pacing(kind);
  c.set_start_fraction(start);
  c.set_full_at_step(full_at_step);
  return c;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Pacing, HandComputedFractions) {
  // s = 0.1, full at step 100.
  const auto linear = pacing(config::PACING_LINEAR, 0.1);
  EXPECT_DOUBLE_EQ(pacing_fraction(linear, 0, 100), 0.1);
  EXPECT_DOUBLE_EQ(pacing_fraction(linear, 50, 100), 0.55);       // 0.1 + 0.9 * 0.5
  EXPECT_DOUBLE_EQ(pacing_fraction(linear, 99, 100), 0.991);      // 0.1 + 0.9 * 0.99
  EXPECT_DOUBLE_EQ(pacing_fraction(linear, 100, 100), 1.0);
  EXPECT_DOUBLE_EQ(pacing_fraction(linear, 5000, 100), 1.0);
  auto root = pacing(config::PACING_ROOT, 0.1);
  EXPECT_DOUBLE_EQ(pacing_fraction(root, 0, 100), 0.1);           // sqrt(0.01)
  EXPECT_NEAR(pacing_fraction(root, 50, 100), 0.7106335201775947, 1e-15);  // sqrt(0.01 + 0.99 / 2)
  root.set_root_degree(3);
  EXPECT_NEAR(pacing_fraction(root, 25, 100), 0.630589856559698, 1e-15);  // (0.001 + 0.999 / 4)^(1/3)
  auto step = pacing(config::PACING_STEP, 0.2);
  step.set_step_count(4);
  EXPECT_DOUBLE_EQ(pacing_fraction(step, 0, 100), 0.2);
  EXPECT_DOUBLE_EQ(pacing_fraction(step, 24, 100), 0.2);          // floor(4 * 24 / 100) = 0
  EXPECT_DOUBLE_EQ(pacing_fraction(step, 25, 100), 0.4);          // 0.2 + 0.8 * 1/4
  EXPECT_DOUBLE_EQ(pacing_fraction(step, 99, 100), 0.8);          // 0.2 + 0.8 * 3/4
  EXPECT_DOUBLE_EQ(pacing_fraction(step, 100, 100), 1.0);
  EXPECT_DOUBLE_EQ(pacing_fraction(pacing(config::PACING_NONE, 0.1), 0, 100), 1.0);
}

TEST(Pacing, AdmittedCountsAreCeilingsOfTheFraction) {
  const std::vector<float> difficulty(20, 0.0f);
  // Linear, s = 0.1 over 100 steps, 20 documents, 1 micro-batch per step.
  const Curriculum linear(pacing(config::PACING_LINEAR, 0.1), difficulty, 100, 1);
  EXPECT_EQ(linear.admitted_count(0), 2u);    // 0.1 * 20
  EXPECT_EQ(linear.admitted_count(50), 11u);  // 0.55 * 20 = 11 exactly (not 12 from rounding)
  EXPECT_EQ(linear.admitted_count(51), 12u);  // 0.559 * 20 = 11.18
  EXPECT_EQ(linear.admitted_count(100), 20u);
  const Curriculum root(pacing(config::PACING_ROOT, 0.1), difficulty, 100, 1);
  EXPECT_EQ(root.admitted_count(50), 15u);  // 0.7106 * 20 = 14.2
  // At least one document even when s * n rounds to less; full_at_step overrides total_steps.
  const Curriculum tiny(pacing(config::PACING_LINEAR, 0.001, 10), difficulty, 100, 4);
  EXPECT_EQ(tiny.admitted_count(0), 1u);
  EXPECT_EQ(tiny.admitted_count(10), 20u);
  EXPECT_EQ(tiny.step_of(39), 9u);  // 4 micro-batches per step
  EXPECT_EQ(tiny.step_of(40), 10u);
}

TEST(Pacing, RankIsEasiestFirstWithTiesByDocumentIndex) {
  const std::vector<float> difficulty = {3.0f, 1.0f, 2.0f, 1.0f, -5.0f};
  const Curriculum c(pacing(config::PACING_LINEAR, 0.5), difficulty, 10, 1);
  const std::vector<uint64_t> expected = {4, 1, 3, 2, 0};
  EXPECT_EQ(std::vector<uint64_t>(c.rank().begin(), c.rank().end()), expected);
  EXPECT_EQ(c.admitted_count(0), 3u);  // ceil(2.5): documents 4, 1 and 3
  EXPECT_TRUE(c.admitted(3, 3));
  EXPECT_FALSE(c.admitted(2, 3));
}

class CurriculumTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           fmt::format("cadtrain_curriculum_{}_{}", ::getpid(), info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // n_docs documents of 1..20 tokens; difficulty is a random permutation of 0..n-1, so a
  // document's rank is its difficulty. Tokens encode (document, position) for exact comparisons.
  std::string write(const std::string& name, uint64_t n_docs, bool with_difficulty = true,
                    uint64_t empty_below_rank = 0) {
    Rng rng(99);
    std::vector<uint64_t> difficulty(n_docs);
    for (uint64_t d = 0; d < n_docs; ++d) difficulty[d] = d;
    for (uint64_t i = n_docs; i > 1; --i) std::swap(difficulty[i - 1], difficulty[rng.below(i)]);
    const std::string path = (dir_ / name).string();
    DatasetWriterOptions options;
    options.vocab_size = 5000;
    options.with_difficulty = with_difficulty;
    options.chunk_tokens = 64;
    DatasetWriter writer(path, options);
    for (uint64_t d = 0; d < n_docs; ++d) {
      const uint64_t length = difficulty[d] < empty_below_rank ? 0 : 1 + rng.below(20);
      std::vector<uint32_t> tokens(length);
      for (uint64_t i = 0; i < length; ++i) tokens[i] = static_cast<uint32_t>(d * 20 + i);
      writer.add_document(tokens, static_cast<float>(difficulty[d]));
    }
    writer.finish();
    return path;
  }

  fs::path dir_;
};

PackerOptions packer_options(std::shared_ptr<const Curriculum> curriculum, uint64_t seed = 5) {
  PackerOptions o;
  o.tokens_per_micro_batch = 16;
  o.window_micro_batches = 2;
  o.seed = seed;
  o.curriculum = std::move(curriculum);
  return o;
}

// Documents whose first token is in the batch (a document longer than 16 tokens is cut).
std::vector<uint64_t> docs_of(const MicroBatch& batch) {
  std::vector<uint64_t> docs;
  for (size_t s = 0; s < batch.doc_ids.size(); ++s) {
    if (batch.positions[static_cast<size_t>(batch.cu_seqlens[s])] == 0) docs.push_back(batch.doc_ids[s]);
  }
  return docs;
}

void expect_same(const MicroBatch& a, const MicroBatch& b, const std::string& where) {
  SCOPED_TRACE(where);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.cu_seqlens, b.cu_seqlens);
  EXPECT_EQ(a.doc_ids, b.doc_ids);
}

TEST_F(CurriculumTest, WindowsTakeOnlyDocumentsEligibleAtTheirStart) {
  const Dataset dataset = Dataset::open(write("eligible.h5", 60));
  // Linear from 10% (6 documents) to all 60 at step 40; one micro-batch per step.
  const auto curriculum = make_curriculum(pacing(config::PACING_LINEAR, 0.1, 40), dataset, 100, 1);
  Packer packer(dataset, packer_options(curriculum));
  std::set<uint64_t> late_hard;
  uint64_t window_start = 0;
  for (uint64_t m = 0; m < 200; ++m) {
    const PackerPosition before = packer.position();
    if (before.batch_in_window == 0) window_start = before.micro_batches;
    const MicroBatch batch = packer.next();
    const uint64_t admitted = curriculum->admitted_count(curriculum->step_of(window_start));
    EXPECT_DOUBLE_EQ(packer.admitted_fraction(), static_cast<double>(admitted) / 60.0) << "micro-batch " << m;
    for (const uint64_t doc : docs_of(batch)) {
      EXPECT_LT(curriculum->rank()[doc], admitted) << "micro-batch " << m << " document " << doc;
      if (m >= 40 && curriculum->rank()[doc] >= 54) late_hard.insert(doc);
    }
  }
  EXPECT_FALSE(late_hard.empty()) << "the hardest documents never came in after full_at_step";
}

TEST_F(CurriculumTest, EachPassShowsEveryEligibleDocumentOnceInShuffledOrder) {
  const Dataset dataset = Dataset::open(write("pass.h5", 80));
  // STEP pacing holds 25% (20 documents) for the first 1000 steps.
  auto cfg = pacing(config::PACING_STEP, 0.25, 4000);
  cfg.set_step_count(3);
  const auto curriculum = make_curriculum(cfg, dataset, 4000, 1);
  for (const uint64_t seed : {5u, 6u}) {
    Packer packer(dataset, packer_options(curriculum, seed));
    std::map<uint64_t, int> seen;  // document -> times seen during epoch 0
    std::vector<uint64_t> order;
    while (packer.position().epoch == 0) {
      for (const uint64_t doc : docs_of(packer.next())) {
        ++seen[doc];
        order.push_back(doc);
      }
    }
    ASSERT_EQ(seen.size(), 20u) << "seed " << seed;
    for (const auto& [doc, times] : seen) {
      EXPECT_LT(curriculum->rank()[doc], 20u);
      EXPECT_EQ(times, 1) << "document " << doc;
    }
    // Shuffled: not the easy-to-hard order nor the file order.
    std::vector<uint64_t> by_rank = order;
    std::sort(by_rank.begin(), by_rank.end(),
              [&](uint64_t a, uint64_t b) { return curriculum->rank()[a] < curriculum->rank()[b]; });
    EXPECT_NE(order, by_rank);
    std::vector<uint64_t> by_index = order;
    std::sort(by_index.begin(), by_index.end());
    EXPECT_NE(order, by_index);
  }
}

TEST_F(CurriculumTest, StreamIsDeterministicFromTheSeed) {
  const Dataset dataset = Dataset::open(write("seed.h5", 50));
  const auto curriculum = make_curriculum(pacing(config::PACING_ROOT, 0.2, 30), dataset, 30, 1);
  Packer a(dataset, packer_options(curriculum, 11));
  Packer b(dataset, packer_options(curriculum, 11));
  Packer c(dataset, packer_options(curriculum, 12));
  bool differs = false;
  for (int m = 0; m < 60; ++m) {
    const MicroBatch ma = a.next();
    expect_same(ma, b.next(), fmt::format("micro-batch {}", m));
    differs = differs || ma.doc_ids != c.next().doc_ids;
  }
  EXPECT_TRUE(differs) << "seeds 11 and 12 gave the same stream";
}

TEST_F(CurriculumTest, ResumeContinuesTheIdenticalStream) {
  const Dataset dataset = Dataset::open(write("resume.h5", 50));
  // Two micro-batches per step (e.g. grad_accumulation 2), pool growing until step 25.
  const auto curriculum = make_curriculum(pacing(config::PACING_LINEAR, 0.1, 25), dataset, 40, 2);
  for (const int k : {0, 1, 7, 23, 40, 61}) {
    Packer original(dataset, packer_options(curriculum));
    for (int i = 0; i < k; ++i) original.next();
    const PackerPosition saved = original.position();
    Packer resumed(dataset, packer_options(curriculum));
    resumed.restore(saved);
    for (int i = 0; i < 30; ++i) {
      const MicroBatch expected = original.next();
      expect_same(expected, resumed.next(), fmt::format("k {} batch {}", k, i));
      EXPECT_EQ(original.admitted_fraction(), resumed.admitted_fraction());
    }
  }
}

TEST_F(CurriculumTest, RanksInterleaveToTheSingleRankStream) {
  const Dataset dataset = Dataset::open(write("ranks.h5", 50));
  constexpr uint32_t kWorld = 3;
  // Every rank builds its own curriculum from the same inputs, as the trainer does.
  const auto cfg = pacing(config::PACING_LINEAR, 0.1, 20);
  Packer single(dataset, packer_options(make_curriculum(cfg, dataset, 20, kWorld)));
  std::vector<Packer> ranks;
  for (uint32_t r = 0; r < kWorld; ++r) {
    PackerOptions o = packer_options(make_curriculum(cfg, dataset, 20, kWorld));
    o.rank = r;
    o.world = kWorld;
    ranks.emplace_back(dataset, o);
  }
  for (int g = 0; g < 90; ++g) {
    expect_same(single.next(), ranks[static_cast<size_t>(g) % kWorld].next(), fmt::format("global batch {}", g));
  }
}

TEST_F(CurriculumTest, DatasetItCannotOrderIsAnError) {
  const Dataset plain = Dataset::open(write("plain.h5", 10, /*with_difficulty=*/false));
  const std::string err =
      error_of([&] { make_curriculum(pacing(config::PACING_LINEAR, 0.1), plain, 10, 1); });
  EXPECT_NE(err.find("plain.h5 has no /difficulty"), std::string::npos) << err;
  EXPECT_NE(err.find("cadtrain data score"), std::string::npos) << err;
  EXPECT_EQ(make_curriculum(pacing(config::PACING_NONE, 0.1), plain, 10, 1), nullptr);

  // The easiest 3 documents are empty, so a pool of 3 has nothing to pack.
  const Dataset hollow = Dataset::open(write("hollow.h5", 30, true, 3));
  Packer packer(hollow, packer_options(make_curriculum(pacing(config::PACING_LINEAR, 0.1, 10), hollow, 10, 1)));
  const std::string empty = error_of([&] { packer.next(); });
  EXPECT_NE(empty.find("the 3 documents eligible at micro-batch 0 hold no token"), std::string::npos) << empty;

  // A curriculum built for another dataset.
  const Dataset other = Dataset::open(write("other.h5", 12));
  const std::string mismatch = error_of([&] {
    Packer p(hollow, packer_options(make_curriculum(pacing(config::PACING_LINEAR, 0.1), other, 10, 1)));
  });
  EXPECT_NE(mismatch.find("the curriculum ranks 12 documents but the dataset has 30"), std::string::npos)
      << mismatch;
}

TEST_F(CurriculumTest, WriteDifficultyToACopyOrInPlaceAndNeverHalfWay) {
  const std::string path = write("scored.h5", 6, /*with_difficulty=*/false);
  const Dataset before = Dataset::open(path);
  const std::vector<uint32_t> doc3 = before.read_doc(3);
  const std::vector<float> scores = {0.5f, -1.0f, 2.0f, 0.0f, 7.25f, 3.0f};

  const std::string copy = (dir_ / "copy.h5").string();
  write_difficulty(path, copy, scores);
  EXPECT_TRUE(Dataset::open(path).difficulty().empty()) << "the source must be left as it was";
  const Dataset scored = Dataset::open(copy);
  EXPECT_EQ(std::vector<float>(scored.difficulty().begin(), scored.difficulty().end()), scores);
  EXPECT_EQ(scored.read_doc(3), doc3);
  EXPECT_EQ(scored.num_tokens(), before.num_tokens());

  // In place, replacing an existing column.
  const std::vector<float> again = {1, 2, 3, 4, 5, 6};
  write_difficulty(copy, copy, again);
  const Dataset rescored = Dataset::open(copy);
  EXPECT_EQ(std::vector<float>(rescored.difficulty().begin(), rescored.difficulty().end()), again);

  // Failures leave both files as they were and no temporary behind.
  const std::string short_err = error_of([&] { write_difficulty(copy, copy, std::vector<float>(5, 0.0f)); });
  EXPECT_NE(short_err.find("5 difficulties for 6 documents"), std::string::npos) << short_err;
  std::vector<float> bad = again;
  bad[4] = std::nanf("");
  const std::string nan_err = error_of([&] { write_difficulty(copy, copy, bad); });
  EXPECT_NE(nan_err.find("document 4: difficulty nan is not finite"), std::string::npos) << nan_err;
  const std::string dir_err = error_of([&] { write_difficulty(copy, (dir_ / "no_such_dir" / "x.h5").string(), again); });
  EXPECT_NE(dir_err.find("cannot write /difficulty"), std::string::npos) << dir_err;
  const Dataset after = Dataset::open(copy);
  EXPECT_EQ(std::vector<float>(after.difficulty().begin(), after.difficulty().end()), again);
  EXPECT_FALSE(fs::exists(copy + ".tmp"));
}

}  // namespace
}  // namespace cadtrain::data
