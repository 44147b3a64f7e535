// Tests of the synthetic long-context corpus (data/synth_corpus.h, data/length_presets.h):
// determinism, exact lengths, the published length statistics, the retrieval tasks parsed back
// from the text, and the round trip through an HDF5 dataset.
#include <gtest/gtest.h>
#include <unistd.h>  // getpid

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"  // Error
#include "common/rng.h"  // Rng
#include "data/dataset.h"         // Dataset
#include "data/length_presets.h"  // quantile tables
#include "data/synth_corpus.h"    // the code under test

namespace cadtrain::data {
namespace {

config::SynthConfig make_config(config::LengthDistribution dist, uint64_t mean, uint64_t min,
                                uint64_t max, uint64_t n_docs) {
  config::SynthConfig cfg;
  cfg.set_length_distribution(dist);
  cfg.set_mean_doc_tokens(mean);
  cfg.set_min_doc_tokens(min);
  cfg.set_max_doc_tokens(max);
  cfg.set_n_docs(n_docs);
  return cfg;
}

// Quantile q of a sample (nearest rank), divided by the configured mean.
double quantile_over_mean(std::vector<uint64_t> v, double q, uint64_t mean) {
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return static_cast<double>(v[i]) / static_cast<double>(mean);
}

double sample_mean(const std::vector<uint64_t>& v) {
  double sum = 0.0;
  for (uint64_t x : v) sum += static_cast<double>(x);
  return sum / static_cast<double>(v.size());
}

// ---- Parsing the document text back -------------------------------------------------------

struct Item {
  std::string key;
  std::string value;
  uint64_t value_pos = 0;
};

struct Parsed {
  std::vector<Item> facts;
  std::vector<Item> queries;
  std::string error;  // empty when the whole text parsed
};

// Reads "<head>KEY<link>DDDD. " at i; advances i past it.
bool parse_item(const std::string& text, size_t& i, const std::string& head,
                const std::string& link, Item& item) {
  if (text.compare(i, head.size(), head) != 0) return false;
  size_t j = i + head.size();
  while (j < text.size() && std::isupper(static_cast<unsigned char>(text[j]))) {
    item.key += text[j++];
  }
  if (item.key.size() < 4 || item.key.size() > 6) return false;
  if (text.compare(j, link.size(), link) != 0) return false;
  j += link.size();
  item.value_pos = j;
  while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) {
    item.value += text[j++];
  }
  if (item.value.size() != 4 || text.compare(j, 2, ". ") != 0) return false;
  i = j + 2;
  return true;
}

// Splits a document into facts, queries and filler; filler may hold only lowercase letters,
// spaces and periods (so keys and values occur nowhere else).
Parsed parse(const std::vector<uint32_t>& tokens) {
  std::string text;
  for (uint32_t t : tokens) text += static_cast<char>(t);
  Parsed out;
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == 'T' || c == 'R') {
      Item item;
      const bool fact = c == 'T';
      if (!parse_item(text, i, fact ? "The code word " : "Recall: ",
                      " is ", item)) {
        out.error = "malformed item at " + std::to_string(i) + ": " + text.substr(i, 40);
        return out;
      }
      (fact ? out.facts : out.queries).push_back(item);
    } else if ((c >= 'a' && c <= 'z') || c == ' ' || c == '.') {
      ++i;
    } else {
      out.error =
          "unexpected byte " + std::to_string(static_cast<int>(c)) + " at " + std::to_string(i);
      return out;
    }
  }
  return out;
}

uint64_t expected_fact_count(uint64_t length, double per_1k) {
  const uint64_t capacity = std::min((length / 2) / 30, (length - length / 2) / 24);
  if (capacity == 0) return 0;
  const auto wanted =
      static_cast<uint64_t>(std::round(static_cast<double>(length) * per_1k / 1000));
  return std::clamp<uint64_t>(wanted, 1, capacity);
}

// Every property of the retrieval tasks a model relies on, for one document.
void check_document(const SynthDocument& doc, uint64_t length, double per_1k) {
  ASSERT_EQ(doc.tokens.size(), length);
  ASSERT_EQ(doc.answer_mask.size(), length);
  const Parsed p = parse(doc.tokens);
  ASSERT_EQ(p.error, "") << "length " << length;
  const uint64_t n = expected_fact_count(length, per_1k);
  ASSERT_EQ(p.facts.size(), n) << "length " << length;
  ASSERT_EQ(p.queries.size(), n) << "length " << length;

  std::map<std::string, const Item*> fact_by_key;
  for (const Item& f : p.facts) {
    EXPECT_LE(f.value_pos + 6, length / 2) << "fact outside the first half";
    EXPECT_TRUE(fact_by_key.emplace(f.key, &f).second) << "duplicate key " << f.key;
  }
  std::vector<uint8_t> expected_mask(length, 0);
  double distance = 0.0;
  for (const Item& q : p.queries) {
    ASSERT_TRUE(fact_by_key.count(q.key)) << "query for unknown key " << q.key;
    const Item& f = *fact_by_key[q.key];
    EXPECT_EQ(q.value, f.value) << q.key;
    EXPECT_GE(q.value_pos, length / 2) << "query outside the second half";
    EXPECT_GT(q.value_pos, f.value_pos);
    distance += static_cast<double>(q.value_pos - f.value_pos);
    for (uint64_t k = 0; k < 4; ++k) expected_mask[q.value_pos + k] = 1;
    fact_by_key.erase(q.key);  // each fact is queried exactly once
  }
  EXPECT_EQ(doc.answer_mask, expected_mask);
  const double difficulty = n == 0 ? 0.0 : distance / static_cast<double>(n) / 1000.0;
  EXPECT_NEAR(doc.difficulty, difficulty, 1e-6 * std::max(1.0, difficulty));
}

// ---- Length distributions -----------------------------------------------------------------

TEST(SynthLengths, SameSeedSameLengthsOtherSeedDifferent) {
  const auto cfg = make_config(config::PRETRAIN, 512, 64, 4096, 1000);
  Rng a(7), b(7), c(8);
  const auto la = sample_doc_lengths(cfg, a);
  EXPECT_EQ(la, sample_doc_lengths(cfg, b));
  EXPECT_NE(la, sample_doc_lengths(cfg, c));
  EXPECT_EQ(la.size(), 1000u);
}

TEST(SynthLengths, WithinMinAndMaxForEveryDistribution) {
  for (auto dist : {config::PRETRAIN, config::PROLONG, config::LOGNORMAL, config::FIXED}) {
    auto cfg = make_config(dist, 1000, 300, 2500, 20000);
    cfg.set_lognormal_sigma(2.0);
    Rng rng(1);
    for (uint64_t len : sample_doc_lengths(cfg, rng)) {
      ASSERT_GE(len, 300u) << config::LengthDistribution_Name(dist);
      ASSERT_LE(len, 2500u) << config::LengthDistribution_Name(dist);
    }
  }
}

TEST(SynthLengths, PretrainMatchesPublishedQuantiles) {
  const auto cfg = make_config(config::PRETRAIN, 10000, 16, 1000000000, 200000);
  Rng rng(3);
  const auto lengths = sample_doc_lengths(cfg, rng);
  // The published quantiles over the published mean, rescaled by the interpolated table's mean
  // (~1.027) so that mean_doc_tokens is the true mean.
  const double table_mean = quantile_table_mean(length_quantiles(config::PRETRAIN));
  EXPECT_NEAR(table_mean, 1.027, 0.01);
  EXPECT_NEAR(quantile_over_mean(lengths, 0.5, 10000), 0.8145 / table_mean, 0.03);
  EXPECT_NEAR(quantile_over_mean(lengths, 0.99, 10000), 6.6 / table_mean, 6.6 * 0.15);
  EXPECT_NEAR(quantile_over_mean(lengths, 0.9, 10000), 1.4599 / table_mean, 0.03);
  EXPECT_NEAR(sample_mean(lengths) / 10000, 1.0, 0.03);
}

TEST(SynthLengths, ProlongMatchesPublishedQuantiles) {
  const auto cfg = make_config(config::PROLONG, 10000, 16, 1000000000, 200000);
  Rng rng(4);
  const auto lengths = sample_doc_lengths(cfg, rng);
  const double table_mean = quantile_table_mean(length_quantiles(config::PROLONG));
  EXPECT_NEAR(quantile_over_mean(lengths, 0.5, 10000), 0.627 / table_mean, 0.03);
  EXPECT_NEAR(quantile_over_mean(lengths, 0.99, 10000), 5.3 / table_mean, 5.3 * 0.15);
  EXPECT_NEAR(quantile_over_mean(lengths, 0.0, 10000), 0.1884 / table_mean, 0.001);
  EXPECT_NEAR(sample_mean(lengths) / 10000, 1.0, 0.05);
}

TEST(SynthLengths, LognormalHasConfiguredMean) {
  auto cfg = make_config(config::LOGNORMAL, 2000, 16, 1000000000, 200000);
  cfg.set_lognormal_sigma(1.0);
  Rng rng(5);
  const auto lengths = sample_doc_lengths(cfg, rng);
  EXPECT_NEAR(sample_mean(lengths) / 2000, 1.0, 0.02);
  // Median of exp(Z - 1/2) is exp(-1/2).
  EXPECT_NEAR(quantile_over_mean(lengths, 0.5, 2000), std::exp(-0.5), 0.02);
}

TEST(SynthLengths, FixedIsExact) {
  const auto cfg = make_config(config::FIXED, 777, 16, 4096, 500);
  Rng rng(6);
  for (uint64_t len : sample_doc_lengths(cfg, rng)) ASSERT_EQ(len, 777u);
}

TEST(SynthLengths, TinyDefaultsPutSomeDocumentsAtTheMaximum) {
  const config::SynthConfig cfg;  // PRETRAIN, mean 512, [64, 4096], 2000 documents
  Rng rng(cfg.seed(), 0);
  const auto lengths = sample_doc_lengths(cfg, rng);
  const auto at_max = std::count(lengths.begin(), lengths.end(), cfg.max_doc_tokens());
  // P(ratio > 8) is ~0.9% in the table: about 18 of 2000.
  EXPECT_GE(at_max, 5);
  EXPECT_LE(at_max, 60);
  EXPECT_GT(std::count(lengths.begin(), lengths.end(), cfg.min_doc_tokens()), 0);
}

TEST(SynthLengths, QuantileTableInterpolates) {
  const auto table = length_quantiles(config::PRETRAIN);
  EXPECT_DOUBLE_EQ(quantile_ratio(table, 0.0), 0.0003);
  EXPECT_DOUBLE_EQ(quantile_ratio(table, 0.5), 0.8145);
  EXPECT_DOUBLE_EQ(quantile_ratio(table, 1.0), 31.5295);
  EXPECT_NEAR(quantile_ratio(table, 0.985), 0.5 * (2.5439 + 6.5774), 1e-12);
  EXPECT_NEAR(quantile_table_mean(table), 1.0268, 1e-3);
  EXPECT_NEAR(quantile_table_mean(length_quantiles(config::PROLONG)), 1.0512, 1e-3);
  EXPECT_THROW(length_quantiles(config::FIXED), Error);
}

// ---- Documents ----------------------------------------------------------------------------

TEST(SynthDocument, SameStreamSameDocumentOtherStreamDifferent) {
  const config::SynthConfig cfg;
  Rng a(1, 5), b(1, 5), c(1, 6), d(2, 5);
  const auto da = generate_document(cfg, 3000, a);
  const auto db = generate_document(cfg, 3000, b);
  EXPECT_EQ(da.tokens, db.tokens);
  EXPECT_EQ(da.answer_mask, db.answer_mask);
  EXPECT_EQ(da.difficulty, db.difficulty);
  EXPECT_NE(da.tokens, generate_document(cfg, 3000, c).tokens);
  EXPECT_NE(da.tokens, generate_document(cfg, 3000, d).tokens);
}

TEST(SynthDocument, ExactLengthAndValidTasksForEveryLength) {
  const config::SynthConfig cfg;  // 4 facts per 1k tokens
  for (uint64_t length = 0; length <= 1200; ++length) {
    Rng rng(11, length);
    check_document(generate_document(cfg, length, rng), length, cfg.facts_per_1k_tokens());
    if (testing::Test::HasFatalFailure()) return;
  }
  for (uint64_t length : {4096u, 10007u, 65536u, 300000u}) {
    Rng rng(12, length);
    check_document(generate_document(cfg, length, rng), length, cfg.facts_per_1k_tokens());
  }
}

TEST(SynthDocument, FactCountFollowsRate) {
  config::SynthConfig cfg;
  cfg.set_facts_per_1k_tokens(4);
  const auto count = [&](uint64_t length) {
    Rng rng(3, length);
    const auto doc = generate_document(cfg, length, rng);
    return static_cast<uint64_t>(std::count(doc.answer_mask.begin(), doc.answer_mask.end(), 1)) / 4;
  };
  EXPECT_EQ(count(1000), 4u);
  EXPECT_EQ(count(5000), 20u);
  EXPECT_EQ(count(100000), 400u);
  EXPECT_EQ(count(200), 1u);  // round(0.8)
  EXPECT_EQ(count(59), 0u);   // too short for a fact and its query (30 + 24 tokens at most)
  cfg.set_facts_per_1k_tokens(0.1);
  EXPECT_EQ(count(300), 1u);  // rounds to 0, but every document that can hold one gets one
  EXPECT_EQ(count(20000), 2u);
}

TEST(SynthDocument, DenseRatesAreCappedByWhatFits) {
  config::SynthConfig cfg;
  cfg.set_facts_per_1k_tokens(100);
  for (uint64_t length : {100u, 500u, 1000u, 7777u}) {
    Rng rng(9, length);
    const auto doc = generate_document(cfg, length, rng);
    check_document(doc, length, 100);
    EXPECT_EQ(std::count(doc.answer_mask.begin(), doc.answer_mask.end(), 1) / 4,
              static_cast<long>((length / 2) / 30));
  }
}

TEST(SynthDocument, DifficultyGrowsWithLength) {
  const config::SynthConfig cfg;
  Rng a(1, 1), b(1, 2);
  const auto short_doc = generate_document(cfg, 1000, a);
  const auto long_doc = generate_document(cfg, 100000, b);
  EXPECT_GT(short_doc.difficulty, 0.1f);
  EXPECT_LT(short_doc.difficulty, 1.0f);
  EXPECT_NEAR(long_doc.difficulty, 50.0f, 10.0f);  // mean distance ~ half the document
  Rng c(1, 3);
  EXPECT_EQ(generate_document(cfg, 50, c).difficulty, 0.0f);
}

TEST(SynthDocument, FillerReadsAsSentences) {
  const config::SynthConfig cfg;
  Rng rng(1, 1);
  const auto doc = generate_document(cfg, 2000, rng);
  const std::string text(doc.tokens.begin(), doc.tokens.end());
  EXPECT_NE(text.find("The code word "), std::string::npos);
  EXPECT_NE(text.find("Recall: "), std::string::npos);
  EXPECT_NE(text.find(". the "), std::string::npos);
}

// ---- Validation ---------------------------------------------------------------------------

std::string error_of(const config::SynthConfig& cfg) {
  try {
    Rng rng(1);
    sample_doc_lengths(cfg, rng);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SynthConfigCheck, NonsenseIsRejectedNamingTheField) {
  auto cfg = make_config(config::PRETRAIN, 512, 500, 100, 10);
  EXPECT_NE(error_of(cfg).find("synth.min_doc_tokens (500) > synth.max_doc_tokens (100)"), std::string::npos);
  cfg = make_config(config::PRETRAIN, 512, 64, 4096, 0);
  EXPECT_NE(error_of(cfg).find("synth.n_docs"), std::string::npos);
  cfg = make_config(config::PRETRAIN, 512, 64, 2000000000, 10);
  EXPECT_NE(error_of(cfg).find("synth.max_doc_tokens"), std::string::npos);
  cfg = make_config(config::PRETRAIN, 0, 64, 4096, 10);
  EXPECT_NE(error_of(cfg).find("synth.mean_doc_tokens"), std::string::npos);
  cfg = make_config(config::PRETRAIN, 512, 0, 4096, 10);
  EXPECT_NE(error_of(cfg).find("synth.min_doc_tokens"), std::string::npos);
  cfg = make_config(config::PRETRAIN, 512, 64, 4096, 10);
  cfg.set_facts_per_1k_tokens(0);
  EXPECT_NE(error_of(cfg).find("synth.facts_per_1k_tokens"), std::string::npos);
  cfg.set_facts_per_1k_tokens(std::nan(""));
  EXPECT_NE(error_of(cfg).find("synth.facts_per_1k_tokens"), std::string::npos);
  cfg.set_facts_per_1k_tokens(4);
  cfg.set_lognormal_sigma(-1);
  EXPECT_NE(error_of(cfg).find("synth.lognormal_sigma"), std::string::npos);
}

// ---- The HDF5 corpus ----------------------------------------------------------------------

// A fresh path under the test temp directory, removed afterwards.
class SynthCorpusFile : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(testing::TempDir()) /
           ("cadtrain_synth_" + std::to_string(::getpid()) + "_" +
            testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

TEST_F(SynthCorpusFile, RoundTripMatchesGenerateDocument) {
  auto cfg = make_config(config::PRETRAIN, 512, 64, 4096, 60);
  cfg.set_seed(42);
  const SynthSummary summary = write_synthetic_corpus(cfg, path("c.h5"));
  const Dataset ds = Dataset::open(path("c.h5"));
  EXPECT_EQ(ds.tokenizer(), "byte");
  EXPECT_EQ(ds.vocab_size(), 256u);
  ASSERT_TRUE(ds.has_answer_mask());
  ASSERT_EQ(ds.num_docs(), 60u);
  ASSERT_EQ(ds.difficulty().size(), 60u);
  EXPECT_EQ(summary.n_docs, 60u);
  EXPECT_EQ(summary.n_tokens, ds.num_tokens());

  Rng length_rng(42, 0);
  const auto lengths = sample_doc_lengths(cfg, length_rng);
  uint64_t answers = 0;
  for (uint64_t d = 0; d < ds.num_docs(); ++d) {
    Rng rng(42, d + 1);
    const SynthDocument doc = generate_document(cfg, lengths[d], rng);
    ASSERT_EQ(ds.doc_length(d), lengths[d]);
    EXPECT_EQ(ds.read_doc(d), doc.tokens) << "doc " << d;
    std::vector<uint8_t> mask(lengths[d]);
    ds.read_answer_mask(ds.doc_offsets()[d], ds.doc_offsets()[d + 1], mask.data());
    EXPECT_EQ(mask, doc.answer_mask) << "doc " << d;
    EXPECT_EQ(ds.difficulty()[d], doc.difficulty) << "doc " << d;
    answers += static_cast<uint64_t>(std::count(mask.begin(), mask.end(), 1));
  }
  EXPECT_EQ(summary.n_answer_tokens, answers);
  EXPECT_GT(answers, 0u);
}

TEST_F(SynthCorpusFile, SameSeedGivesIdenticalFiles) {
  auto cfg = make_config(config::PROLONG, 300, 32, 3000, 40);
  write_synthetic_corpus(cfg, path("a.h5"));
  write_synthetic_corpus(cfg, path("b.h5"));
  cfg.set_seed(cfg.seed() + 1);
  write_synthetic_corpus(cfg, path("c.h5"));
  const Dataset a = Dataset::open(path("a.h5"));
  const Dataset b = Dataset::open(path("b.h5"));
  const Dataset c = Dataset::open(path("c.h5"));
  ASSERT_EQ(a.num_tokens(), b.num_tokens());
  std::vector<uint32_t> ta(a.num_tokens()), tb(b.num_tokens()), tc(c.num_tokens());
  a.read_tokens(0, a.num_tokens(), ta.data());
  b.read_tokens(0, b.num_tokens(), tb.data());
  c.read_tokens(0, c.num_tokens(), tc.data());
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
  EXPECT_TRUE(std::equal(a.doc_offsets().begin(), a.doc_offsets().end(), b.doc_offsets().begin(),
                         b.doc_offsets().end()));
}

TEST_F(SynthCorpusFile, InvalidConfigWritesNothing) {
  const auto cfg = make_config(config::PRETRAIN, 512, 500, 100, 10);
  try {
    write_synthetic_corpus(cfg, path("bad.h5"));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("synth.min_doc_tokens (500)"), std::string::npos);
  }
  EXPECT_FALSE(std::filesystem::exists(path("bad.h5")));
  EXPECT_FALSE(std::filesystem::exists(path("bad.h5.tmp")));
}

}  // namespace
}  // namespace cadtrain::data
