// `cadtrain data score`'s scores: per-document mean loss and answer correctness of a tiny model
// against a per-document reference from its full logits, and the answer-share difficulty on
// hand-computed cases.
#include <gtest/gtest.h>
#include <unistd.h>  // getpid: unique temp directories

#include <algorithm>   // std::max_element
#include <cmath>       // std::exp, std::log
#include <filesystem>  // temp directories
#include <string>
#include <vector>

#include "common/error.h"
#include "common/rng.h"
#include "configs/config.h"
#include "data/dataset.h"
#include "trainer/batch.h"
#include "trainer/difficulty_score.h"
#include "trainer/session.h"

namespace fs = std::filesystem;
using namespace cadtrain;

namespace {

constexpr uint32_t kVocab = 256;

struct RefScore {
  double mean_loss = 0;
  uint64_t answers = 0, right = 0;
};

// One document alone in a batch; cross-entropy and argmax from the materialized logits, in double.
RefScore reference(trainer::Model& model, const std::vector<uint32_t>& tokens, const std::vector<uint8_t>& mask) {
  const size_t n = tokens.size();
  data::MicroBatch mb;
  mb.tokens = tokens;
  for (size_t i = 0; i < n; ++i) {
    mb.targets.push_back(i + 1 < n ? tokens[i + 1] : 0);
    mb.loss_mask.push_back(i + 1 < n ? 1.0f : 0.0f);
    mb.positions.push_back(static_cast<int32_t>(i));
  }
  mb.cu_seqlens = {0, static_cast<int32_t>(n)};
  std::vector<float> logits(n * kVocab);
  model.logits(trainer::batch_view(mb), logits.data());
  RefScore r;
  for (size_t i = 0; i + 1 < n; ++i) {
    const float* row = logits.data() + i * kVocab;
    const float top = *std::max_element(row, row + kVocab);
    double z = 0;
    for (uint32_t v = 0; v < kVocab; ++v) z += std::exp(static_cast<double>(row[v]) - top);
    r.mean_loss += std::log(z) + top - row[tokens[i + 1]];
    if (mask[i + 1]) {
      ++r.answers;
      r.right += static_cast<uint32_t>(std::max_element(row, row + kVocab) - row) == tokens[i + 1] ? 1 : 0;
    }
  }
  r.mean_loss /= static_cast<double>(n - 1);
  return r;
}

TEST(DifficultyScore, MatchesAPerDocumentReference) {
  const fs::path dir = fs::temp_directory_path() / ("cadtrain_score_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "score.h5").string();
  std::vector<std::vector<uint32_t>> docs;
  std::vector<std::vector<uint8_t>> masks;
  {
    data::DatasetWriterOptions options;
    options.vocab_size = kVocab;
    options.with_answer_mask = true;
    data::DatasetWriter writer(path, options);
    Rng rng(3);
    for (const size_t length : {5u, 17u, 32u, 2u, 30u, 9u, 24u}) {
      std::vector<uint32_t> tokens(length);
      std::vector<uint8_t> mask(length);
      for (size_t i = 0; i < length; ++i) {
        tokens[i] = static_cast<uint32_t>(rng.below(kVocab));
        mask[i] = static_cast<uint8_t>(i > 0 && rng.below(3) == 0);
      }
      writer.add_document(tokens, 0.0f, mask);
      docs.push_back(tokens);
      masks.push_back(mask);
    }
    writer.finish();
  }
  const config::RunConfig cfg = config::parse_run_config(
      "", "test", {"model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=64",
                   "model.init_std=0.5", "parallel.threads=1"});
  trainer::ModelSession session = trainer::make_model_session(cfg, 32);
  session.model->init_weights(7);
  const data::Dataset ds = data::Dataset::open(path);
  const trainer::DocumentScores s = trainer::score_documents(*session.model, ds, 32);
  const std::vector<float> difficulty = trainer::mean_loss_difficulty(s);
  ASSERT_EQ(difficulty.size(), docs.size());
  uint64_t answers = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    const RefScore r = reference(*session.model, docs[d], masks[d]);
    EXPECT_EQ(s.scored[d], docs[d].size() - 1) << "document " << d;
    EXPECT_NEAR(difficulty[d], r.mean_loss, 1e-4 * r.mean_loss) << "document " << d;
    EXPECT_EQ(s.answers[d], r.answers) << "document " << d;
    EXPECT_EQ(s.answers_right[d], r.right) << "document " << d;
    answers += r.answers;
  }
  EXPECT_GT(answers, 10u);
  fs::remove_all(dir);
}

trainer::DocumentScores hand(std::vector<uint64_t> answers, std::vector<uint64_t> right) {
  trainer::DocumentScores s;
  s.answers = std::move(answers);
  s.answers_right = std::move(right);
  s.loss_sum.assign(s.answers.size(), 0.0);
  s.scored.assign(s.answers.size(), 0);
  return s;
}

TEST(DifficultyScore, AnswerShareOnHandCases) {
  // Four documents, three models. Document 0: every model right; 1: one of three gets all its
  // answers (the others miss one); 2: none; 3: no answers at all.
  const std::vector<trainer::DocumentScores> models = {
      hand({2, 4, 1, 0}, {2, 4, 0, 0}), hand({2, 4, 1, 0}, {2, 3, 0, 0}), hand({2, 4, 1, 0}, {2, 0, 0, 0})};
  const std::vector<float> d = trainer::answer_difficulty(models);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_FLOAT_EQ(d[0], 0.0f);
  EXPECT_FLOAT_EQ(d[1], 2.0f / 3.0f);
  EXPECT_FLOAT_EQ(d[2], 1.0f);
  EXPECT_FLOAT_EQ(d[3], 0.0f);
  try {
    trainer::answer_difficulty({hand({0, 0}, {0, 0})});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no document has answer tokens"), std::string::npos) << e.what();
  }
}

}  // namespace
