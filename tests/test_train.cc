// The training loop end to end on a small synthetic corpus: bit-exact resume, checkpoint shape
// checks, non-finite handling.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <span>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "configs/config.h"
#include "data/dataset.h"
#include "kernels/backend.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"
#include "trainer/parameters.h"
#include "trainer/session.h"
#include "trainer/evaluate.h"
#include "trainer/train_loop.h"

namespace fs = std::filesystem;
using namespace cadtrain;

namespace {

class TrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cadtrain_train_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A model and corpus small enough for a few seconds of training.
  config::RunConfig small_config(const std::string& name, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> sets = {
        "name=" + name, "output_dir=" + dir_.string(), "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
        "model.layer_kinds=[ATTENTION, SHORT_CONV]", "model.max_seq_len=512",
        "data.train_path=" + (dir_ / "train.h5").string(), "data.eval_path=" + (dir_ / "eval.h5").string(),
        "data.tokens_per_micro_batch=256", "data.grad_accumulation=2",
        "data.synth={ n_docs: 120 mean_doc_tokens: 96 min_doc_tokens: 16 max_doc_tokens: 512 }",
        "schedule.total_steps=20", "schedule.warmup_steps=3", "schedule.eval_every=0", "schedule.eval_batches=2",
        "checkpoint.every_steps=10", "checkpoint.keep_last=5", "parallel.threads=2"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return config::parse_run_config("", "test", sets);
  }

  static std::vector<nlohmann::json> step_lines(const fs::path& metrics) {
    std::vector<nlohmann::json> out;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (!j.contains("eval")) out.push_back(j);
    }
    return out;
  }

  fs::path dir_;
};

}  // namespace

TEST_F(TrainTest, ResumeIsBitExact) {
  // 20 steps straight; then a second run that resumes from the first's step-10 checkpoint.
  const auto straight = small_config("straight");
  const trainer::TrainResult a = trainer::train(straight, "test", "");
  EXPECT_EQ(a.steps, 20u);
  const auto resumed_cfg = small_config("resumed");
  const trainer::TrainResult b =
      trainer::train(resumed_cfg, "test", (dir_ / "straight" / "checkpoints" / "step_00000010.h5").string());
  EXPECT_EQ(b.steps, 20u);
  const auto la = step_lines(dir_ / "straight" / "metrics.jsonl");
  const auto lb = step_lines(dir_ / "resumed" / "metrics.jsonl");
  ASSERT_EQ(la.size(), 20u);
  ASSERT_EQ(lb.size(), 10u);
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(lb[i]["step"], la[10 + i]["step"]);
    // Bit for bit: the doubles must be identical, not close.
    EXPECT_EQ(lb[i]["loss"].get<double>(), la[10 + i]["loss"].get<double>()) << "step " << la[10 + i]["step"];
    EXPECT_EQ(lb[i]["grad_norm"].get<double>(), la[10 + i]["grad_norm"].get<double>());
  }
  EXPECT_LT(la.back()["loss"].get<double>(), la.front()["loss"].get<double>());
  EXPECT_TRUE(a.evaluated);
  EXPECT_EQ(a.eval.loss, b.eval.loss);
}

TEST_F(TrainTest, CurriculumRunReportsItsPoolAndResumesBitExact) {
  // Linear pacing from 20% of the documents to all at step 6 of 8; resumed from step 4.
  const std::vector<std::string> curriculum = {
      "schedule.total_steps=8", "checkpoint.every_steps=4",
      "data.curriculum={ pacing: PACING_LINEAR start_fraction: 0.2 full_at_step: 6 }"};
  trainer::train(small_config("straight", curriculum), "test", "");
  trainer::train(small_config("resumed", curriculum), "test",
                 (dir_ / "straight" / "checkpoints" / "step_00000004.h5").string());
  const auto la = step_lines(dir_ / "straight" / "metrics.jsonl");
  const auto lb = step_lines(dir_ / "resumed" / "metrics.jsonl");
  ASSERT_EQ(la.size(), 8u);
  ASSERT_EQ(lb.size(), 4u);
  EXPECT_DOUBLE_EQ(la.front()["admitted"].get<double>(), 24.0 / 120.0);  // ceil(0.2 * 120) documents
  for (size_t i = 1; i < la.size(); ++i) {
    EXPECT_GE(la[i]["admitted"].get<double>(), la[i - 1]["admitted"].get<double>()) << "step " << i + 1;
  }
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(lb[i]["loss"].get<double>(), la[4 + i]["loss"].get<double>()) << "step " << la[4 + i]["step"];
    EXPECT_EQ(lb[i]["admitted"].get<double>(), la[4 + i]["admitted"].get<double>());
    EXPECT_EQ(lb[i]["tokens"].get<double>(), la[4 + i]["tokens"].get<double>());
  }
}

TEST_F(TrainTest, CheckpointIntoAnotherShapeNamesTensorAndShapes) {
  trainer::train(small_config("run", {"schedule.total_steps=2", "schedule.warmup_steps=1"}), "test", "");
  try {
    trainer::load_model((dir_ / "run").string(), 0, {"model.d_model=64"});
    FAIL() << "expected a shape mismatch";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tensor params/tok_embedding has shape [256, 32], the model expects [256, 64]"),
              std::string::npos)
        << msg;
  }
}

TEST_F(TrainTest, NonFiniteStepFailsOrIsSkipped) {
  // A checkpoint whose weights hold a NaN (as a bad update or a flipped bit in memory would
  // leave them): resuming from it must stop with the tensor named, or skip every step.
  trainer::train(small_config("base", {"schedule.total_steps=1", "schedule.warmup_steps=0"}), "test", "");
  const fs::path poisoned = dir_ / "poisoned.h5.d";
  {
    trainer::LoadedModel m = trainer::load_model((dir_ / "base").string(), 0);
    trainer::ParameterSet& p = m.session.model->params();
    p.param(p.index_of("layers.1.conv.w_out"))[3] = std::numeric_limits<float>::quiet_NaN();
    trainer::AdamW adam(m.cfg.optimizer(), p, *m.session.backend);
    trainer::TrainingState state = trainer::read_checkpoint_state(m.path);
    trainer::save_checkpoint(poisoned.string(), state, trainer::checkpoint_tensors(*m.session.model, &adam), 1);
  }
  const std::vector<std::string> three = {"schedule.total_steps=4", "schedule.warmup_steps=0"};
  try {
    trainer::train(small_config("fail", three), "test", poisoned.string());
    FAIL() << "expected a non-finite error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step 2: non-finite value in the weights of layers.1.conv.w_out"), std::string::npos) << e.what();
  }
  auto skip = three;
  skip.push_back("optimizer.on_nonfinite=SKIP_STEP");
  const trainer::TrainResult r = trainer::train(small_config("skip", skip), "test", poisoned.string());
  EXPECT_EQ(r.steps, 4u);
  const auto lines = step_lines(dir_ / "skip" / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (const auto& line : lines) EXPECT_TRUE(line["skipped"].get<bool>()) << line.dump();
}

TEST_F(TrainTest, EffectiveConfigIsWrittenBesideTheRun) {
  trainer::train(small_config("cfg", {"schedule.total_steps=1", "schedule.warmup_steps=0"}), "from test", "");
  const auto back = config::load_run_config((dir_ / "cfg" / "config.pbtxt").string());
  EXPECT_EQ(back.model().d_model(), 32u);
}

TEST_F(TrainTest, UnsupportedSetupFailsBeforeAnyWork) {
  // A config this build cannot run must fail before generating data or creating the run.
  for (const std::string& set : {std::string("device=CUDA"), std::string("parallel.data_parallel=2")}) {
    try {
      trainer::train(small_config("unsupported", {set}), "test", "");
      FAIL() << "expected an error for " << set;
    } catch (const Error& e) {
      SCOPED_TRACE(e.what());
    }
    EXPECT_FALSE(fs::exists(dir_ / "train.h5")) << set;
    EXPECT_FALSE(fs::exists(dir_ / "unsupported")) << set;
  }
}

TEST_F(TrainTest, ContextParallelRejectsWhatItCannotRunNamingTheField) {
  const auto expect_error = [&](const std::vector<std::string>& sets, const std::string& field, uint32_t world) {
    try {
      trainer::check_supported(small_config("cp", sets), world);
      ADD_FAILURE() << "expected an error naming " << field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  // small_config's second layer is a short convolution.
  expect_error({"parallel.context_parallel=2", "attention.strategy=RING"}, "model.layer_kinds[1] is SHORT_CONV", 2);
  expect_error({"parallel.context_parallel=2", "attention.strategy=TOKENRING", "model.layer_kinds=[ATTENTION, ATTENTION]",
                "loss.distill.teacher_path=t.h5"},
               "loss.distill.teacher_path", 2);
  expect_error({"attention.strategy=CAD"}, "attention.strategy CAD", 1);
  EXPECT_NO_THROW(trainer::check_supported(
      small_config("cp", {"parallel.context_parallel=2", "parallel.data_parallel=2", "attention.strategy=RING",
                          "model.layer_kinds=[ATTENTION, ATTENTION]"}),
      4));
}

TEST_F(TrainTest, FinalEvalIsTheWholeFileAsEvalReportsIt) {
  // One definition of "eval loss": train's final evaluation and a later `cadtrain eval` of the
  // saved checkpoint score the same tokens and agree exactly.
  const trainer::TrainResult r =
      trainer::train(small_config("final", {"schedule.total_steps=2", "schedule.warmup_steps=1"}), "test", "");
  ASSERT_TRUE(r.evaluated);
  EXPECT_TRUE(r.eval.whole_dataset);
  EXPECT_EQ(trainer::eval_scope(r.eval), "whole file");
  const data::Dataset eval_ds = data::Dataset::open((dir_ / "eval.h5").string());
  uint64_t targets = 0;  // every token but each document's last has a next token to score
  for (uint64_t d = 0; d < eval_ds.num_docs(); ++d) targets += eval_ds.doc_length(d) > 0 ? eval_ds.doc_length(d) - 1 : 0;
  EXPECT_EQ(r.eval.tokens, targets);

  trainer::LoadedModel m = trainer::load_model((dir_ / "final").string(), 0);
  const trainer::EvalResult again = trainer::evaluate(*m.session.model, eval_ds, m.cfg.data().tokens_per_micro_batch());
  EXPECT_EQ(again.loss, r.eval.loss);
  EXPECT_EQ(again.tokens, r.eval.tokens);
  EXPECT_EQ(again.answer_correct, r.eval.answer_correct);

  const trainer::EvalResult partial = trainer::evaluate(*m.session.model, eval_ds, m.cfg.data().tokens_per_micro_batch(), 2);
  EXPECT_FALSE(partial.whole_dataset);
  EXPECT_EQ(trainer::eval_scope(partial), "first 2 micro-batches");
  EXPECT_LT(partial.tokens, r.eval.tokens);
}

TEST_F(TrainTest, EvalLossDoesNotDependOnTheMicroBatchSize) {
  // Whole documents (the longest is 512 tokens): packing them 512 or 1024 or 2048 to a micro-batch
  // changes only the summation order, never a token's context.
  trainer::train(small_config("sizes", {"schedule.total_steps=1", "schedule.warmup_steps=0"}), "test", "");
  trainer::LoadedModel m = trainer::load_model((dir_ / "sizes").string(), 2048);
  const data::Dataset eval_ds = data::Dataset::open((dir_ / "eval.h5").string());
  const trainer::EvalResult base = trainer::evaluate(*m.session.model, eval_ds, 512);
  EXPECT_EQ(base.cut_tokens, 0u);
  for (const uint64_t tokens : {1024, 2048}) {
    const trainer::EvalResult r = trainer::evaluate(*m.session.model, eval_ds, tokens);
    EXPECT_EQ(r.tokens, base.tokens) << tokens;
    EXPECT_EQ(r.cut_tokens, 0u);
    EXPECT_NEAR(r.loss, base.loss, 1e-6 * base.loss) << tokens;
    EXPECT_EQ(r.answer_tokens, base.answer_tokens);
  }
}

TEST_F(TrainTest, StepMetricsReportFillAndCutTokens) {
  // Micro-batches of 128 with documents up to 512 tokens: whole documents are packed (fill at
  // most 100%), and the longer ones are cut, counted.
  trainer::train(small_config("fill", {"schedule.total_steps=6", "data.tokens_per_micro_batch=128"}), "test", "");
  uint64_t cut = 0;
  for (const auto& line : step_lines(dir_ / "fill" / "metrics.jsonl")) {
    const uint64_t tokens = line["tokens"].get<uint64_t>();
    EXPECT_GT(tokens, 0u);
    EXPECT_LE(tokens, 256u);  // 2 micro-batches of 128
    EXPECT_EQ(line["unused_tokens"].get<uint64_t>(), 256u - tokens);
    EXPECT_DOUBLE_EQ(line["fill"].get<double>(), static_cast<double>(tokens) / 256.0);
    cut += line["cut_tokens"].get<uint64_t>();
  }
  EXPECT_GT(cut, 0u);
}

namespace {

// A group of two ranks whose other rank holds exactly this rank's data: sums double, and the
// gradient "all-reduce" doubles each announced group. Training must then reproduce the
// single-process run bit for bit (the loss normaliser counts both ranks' tokens, so the scaled
// gradients are halved and the reduction doubles them back; powers of two are exact).
class TwinGroup final : public trainer::TrainGroup {
 public:
  explicit TwinGroup(bool writer) : writer_(writer) {}
  uint32_t data_rank() const override { return 0; }
  uint32_t data_ranks() const override { return 1; }
  bool is_writer() const override { return writer_; }
  void sum_over_batch(std::span<double> values) override {
    ++sums;
    for (double& v : values) v *= 2;
  }
  std::unique_ptr<trainer::GradientSync> make_gradient_sync(trainer::ParameterSet& params,
                                                            kernels::Backend& backend) override {
    return std::make_unique<Sync>(params, backend, *this);
  }
  int sums = 0, groups = 0, finishes = 0;

 private:
  struct Sync final : trainer::GradientSync {
    Sync(trainer::ParameterSet& p, kernels::Backend& b, TwinGroup& g) : params(p), backend(b), group(g) {}
    void grads_ready(const trainer::GradGroup& g) override {
      ++group.groups;
      backend.scale(params.grads() + g.offset, 2.0f, g.count);
    }
    void finish_step() override { ++group.finishes; }
    trainer::ParameterSet& params;
    kernels::Backend& backend;
    TwinGroup& group;
  };
  bool writer_;
};

}  // namespace

TEST_F(TrainTest, TrainGroupNormalisesByTheGlobalBatchAndOnlyTheWriterWrites) {
  const auto single = small_config("single", {"schedule.total_steps=4", "checkpoint.every_steps=0"});
  const trainer::TrainResult a = trainer::train(single, "test", "");
  TwinGroup twin(true);
  const auto twin_cfg = small_config("twin", {"schedule.total_steps=4", "checkpoint.every_steps=0"});
  const trainer::TrainResult b = trainer::train(twin_cfg, "test", "", twin);
  EXPECT_EQ(twin.finishes, 4);
  EXPECT_EQ(twin.sums, 8);  // the weight and the loss of each step
  EXPECT_EQ(twin.groups, 4 * (2 + 2));  // per step: head, 2 layers, embedding
  EXPECT_EQ(a.first_loss, b.first_loss);
  EXPECT_EQ(a.last_loss, b.last_loss);
  const auto la = step_lines(dir_ / "single" / "metrics.jsonl");
  const auto lb = step_lines(dir_ / "twin" / "metrics.jsonl");
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(la[i]["loss"], lb[i]["loss"]) << "step " << i + 1;
    EXPECT_EQ(la[i]["grad_norm"], lb[i]["grad_norm"]) << "step " << i + 1;
  }
  // A rank that is not the writer trains the same steps but writes no run directory, metrics or
  // checkpoint.
  TwinGroup reader(false);
  const trainer::TrainResult c =
      trainer::train(small_config("reader", {"schedule.total_steps=3", "checkpoint.every_steps=1"}), "test", "", reader);
  EXPECT_EQ(c.steps, 3u);
  EXPECT_TRUE(c.checkpoint.empty());
  EXPECT_FALSE(fs::exists(dir_ / "reader"));
}
