// Config loading: every shipped .pbtxt is valid; every malformed, unknown, mistyped, out-of-range
// or inconsistent input is rejected with the source, line:column where known, and field name.
#include <gtest/gtest.h>
#include <google/protobuf/util/message_differencer.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"
#include "configs/config.h"

namespace fs = std::filesystem;
using cadtrain::Error;
using namespace cadtrain::config;

namespace {

// The error text of parsing `text` (as source "t.pbtxt") with overrides; "" if it parses.
std::string parse_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_run_config(text, "t.pbtxt", overrides);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}


}  // namespace

TEST(Config, DefaultsAreValid) {
  EXPECT_TRUE(find_problems(RunConfig{}).empty());
}

TEST(Config, EveryShippedConfigLoads) {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(CADTRAIN_SOURCE_DIR) / "configs")) {
    if (entry.path().extension() != ".pbtxt") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(load_run_config(entry.path().string()));
    ++n;
  }
  EXPECT_GE(n, 5);
}

TEST(Config, TinyDefaultMatchesSchemaDefaults) {
  // The commented tiny file restates the schema defaults: they must not drift apart.
  const RunConfig tiny = load_run_config(std::string(CADTRAIN_SOURCE_DIR) + "/configs/tiny_cpu.pbtxt");
  const RunConfig round = parse_run_config(effective_config_text(RunConfig{}, "defaults"), "defaults");
  const RunConfig tiny_full = parse_run_config(effective_config_text(tiny, "tiny"), "tiny");
  std::string diff;
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(round, tiny_full)) << diff;
}

TEST(Config, MalformedSyntaxGivesLineAndColumn) {
  const std::string err = parse_error("name: \"x\"\nmodel {\n  n_layers: 4\n");
  EXPECT_NE(err.find("t.pbtxt:4:1"), std::string::npos) << err;
}

TEST(Config, UnknownFieldIsRejected) {
  const std::string err = parse_error("model {\n  n_layer: 4\n}\n");
  EXPECT_NE(err.find("t.pbtxt:2:"), std::string::npos) << err;
  EXPECT_NE(err.find("n_layer"), std::string::npos) << err;
}

TEST(Config, WrongTypeIsRejected) {
  const std::string err = parse_error("model { n_layers: \"four\" }");
  EXPECT_NE(err.find("t.pbtxt:1:"), std::string::npos) << err;
  EXPECT_NE(err.find("n_layers"), std::string::npos) << err;
  EXPECT_NE(parse_error("model { tie_embeddings: 7 }").find("tie_embeddings"), std::string::npos);
  EXPECT_NE(parse_error("attention { strategy: SIDEWAYS }").find("SIDEWAYS"), std::string::npos);
}

TEST(Config, IntegerOverflowIsRejected) {
  EXPECT_NE(parse_error("model { n_layers: -1 }").find("t.pbtxt:1:"), std::string::npos);
  EXPECT_NE(parse_error("model { d_model: 99999999999 }").find("t.pbtxt:1:"), std::string::npos);
}

TEST(Config, DuplicateFieldIsRejected) {
  EXPECT_NE(parse_error("seed: 1\nseed: 2\n").find("t.pbtxt:2:"), std::string::npos);
}

TEST(Config, OutOfRangeNamesFieldAndLocation) {
  const std::string err = parse_error("model {\n  d_model: 64\n  n_layers: 0\n}\n");
  EXPECT_NE(err.find("t.pbtxt:3:3: model.n_layers = 0 is below its minimum 1"), std::string::npos) << err;
  const std::string err2 = parse_error("optimizer { beta2: 1.5 }");
  EXPECT_NE(err2.find("optimizer.beta2 = 1.5 is above its maximum"), std::string::npos) << err2;
}

TEST(Config, NonFiniteValueIsRejected) {
  const std::string err = parse_error("optimizer { lr: nan }");
  EXPECT_NE(err.find("optimizer.lr must be finite"), std::string::npos) << err;
  EXPECT_NE(parse_error("optimizer { grad_clip: inf }").find("optimizer.grad_clip must be finite"),
            std::string::npos);
}

TEST(Config, HeadsNotDivisibleByKvHeads) {
  const std::string err = parse_error("model {\n  d_model: 240\n  n_heads: 12\n  n_kv_heads: 5\n}\n");
  EXPECT_NE(err.find("t.pbtxt:4:3: model.n_heads (12) is not divisible by model.n_kv_heads (5)"),
            std::string::npos) << err;
}

TEST(Config, ModelShapeRules) {
  EXPECT_NE(parse_error("model { d_model: 250 n_heads: 4 }").find("model.d_model (250) is not divisible"),
            std::string::npos);
  EXPECT_NE(parse_error("model { d_model: 12 n_heads: 4 }").find("must be even"), std::string::npos);
  EXPECT_NE(parse_error("model { n_layers: 3 layer_kinds: [ATTENTION, SHORT_CONV] }")
                .find("model.layer_kinds has 2 entries but model.n_layers is 3"),
            std::string::npos);
  EXPECT_EQ(parse_error("model { n_layers: 2 layer_kinds: [ATTENTION, SHORT_CONV] }"), "");
}

TEST(Config, ParallelDegreesMustMultiplyToWorldSize) {
  const std::string err = parse_error(
      "parallel { world_size: 8 data_parallel: 2 context_parallel: 2 }\nattention { strategy: RING }\n");
  EXPECT_NE(err.find("parallel.world_size (8) != parallel.data_parallel (2) x parallel.context_parallel (2)"),
            std::string::npos) << err;
  EXPECT_EQ(parse_error("parallel { world_size: 4 data_parallel: 2 context_parallel: 2 }\n"
                        "attention { strategy: RING }\n"), "");
}

TEST(Config, StrategyLayoutRules) {
  EXPECT_NE(parse_error("parallel { context_parallel: 2 }").find("needs attention.strategy RING"),
            std::string::npos);
  EXPECT_NE(parse_error("parallel { context_parallel: 2 } attention { strategy: CAD }")
                .find("parallel.context_parallel must be 1"),
            std::string::npos);
  EXPECT_NE(parse_error("attention { strategy: CAD cad { dedicated_servers: 2 } }")
                .find("must be 0 in INPLACE mode"),
            std::string::npos);
  EXPECT_NE(parse_error("attention { strategy: CAD cad { mode: DEDICATED } }").find("dedicated_servers >= 1"),
            std::string::npos);
  EXPECT_NE(parse_error("device: CUDA attention { strategy: CAD cad { shard_tokens: 100 } }")
                .find("multiple of 128 on CUDA"),
            std::string::npos);
  EXPECT_EQ(parse_error("parallel { world_size: 6 data_parallel: 4 }\n"
                        "attention { strategy: CAD cad { mode: DEDICATED dedicated_servers: 2 } }"), "");
}

TEST(Config, ScheduleAndSynthRules) {
  EXPECT_NE(parse_error("schedule { total_steps: 10 warmup_steps: 20 }")
                .find("schedule.warmup_steps (20) > schedule.total_steps (10)"),
            std::string::npos);
  EXPECT_NE(parse_error("data { synth { min_doc_tokens: 500 max_doc_tokens: 100 mean_doc_tokens: 200 } }")
                .find("data.synth.min_doc_tokens (500) > data.synth.max_doc_tokens (100)"),
            std::string::npos);
  EXPECT_NE(parse_error("name: \"a/b\"").find("must be non-empty and contain no '/'"), std::string::npos);
}

TEST(Config, CurriculumRules) {
  EXPECT_NE(parse_error("data { curriculum { pacing: PACING_LINEAR start_fraction: 0 } }")
                .find("data.curriculum.start_fraction = 0 must be > 0"),
            std::string::npos);
  EXPECT_NE(parse_error("data { curriculum { pacing: PACING_ROOT start_fraction: 1.5 } }")
                .find("data.curriculum.start_fraction = 1.5 is above its maximum 1"),
            std::string::npos);
  EXPECT_NE(parse_error("schedule { total_steps: 100 } data { curriculum { pacing: PACING_STEP full_at_step: 101 } }")
                .find("data.curriculum.full_at_step (101) > schedule.total_steps (100)"),
            std::string::npos);
  EXPECT_NE(parse_error("data { curriculum { pacing: PACING_STEP step_count: 0 } }")
                .find("data.curriculum.step_count = 0 is below its minimum 1"),
            std::string::npos);
  EXPECT_NE(parse_error("data { curriculum { pacing: PACING_ROOT root_degree: 0.5 } }")
                .find("data.curriculum.root_degree = 0.5 is below its minimum 1"),
            std::string::npos);
  EXPECT_NE(parse_error("data { curriculum { pacing: PACING_SQRT } }").find("PACING_SQRT"), std::string::npos);
  // Off, the other fields are not used and so not held to the rules.
  EXPECT_EQ(parse_error("data { curriculum { start_fraction: 0 full_at_step: 1000 } }"), "");
  EXPECT_EQ(parse_error("schedule { total_steps: 100 } data { curriculum { pacing: PACING_LINEAR "
                        "start_fraction: 0.05 full_at_step: 100 } }"),
            "");
}

TEST(Config, EveryProblemIsReported) {
  const std::string err = parse_error("model { n_layers: 0 n_heads: 3 n_kv_heads: 2 }\nschedule { warmup_steps: 1000 }");
  EXPECT_NE(err.find("model.n_layers"), std::string::npos) << err;
  EXPECT_NE(err.find("model.n_kv_heads"), std::string::npos) << err;
  EXPECT_NE(err.find("schedule.warmup_steps"), std::string::npos) << err;
}

TEST(Config, MissingFileIsNamed) {
  try {
    load_run_config("/nonexistent/dir/x.pbtxt");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/x.pbtxt"), std::string::npos) << e.what();
  }
}

TEST(ConfigOverride, SetsScalarsEnumsStringsAndLists) {
  const RunConfig cfg = parse_run_config(
      "", "t", {"optimizer.lr=1e-4", "attention.strategy=RING", "parallel.context_parallel=2",
                "name=my_run", "data.train_path=\"a b.h5\"", "model.n_layers=2",
                "model.layer_kinds=[SHORT_CONV, ATTENTION]", "data.synth={ seed: 9 n_docs: 5 }"});
  EXPECT_DOUBLE_EQ(cfg.optimizer().lr(), 1e-4);
  EXPECT_EQ(cfg.attention().strategy(), RING);
  EXPECT_EQ(cfg.name(), "my_run");
  EXPECT_EQ(cfg.data().train_path(), "a b.h5");
  ASSERT_EQ(cfg.model().layer_kinds_size(), 2);
  EXPECT_EQ(cfg.model().layer_kinds(0), SHORT_CONV);
  EXPECT_EQ(cfg.data().synth().seed(), 9u);
  EXPECT_EQ(cfg.data().synth().n_docs(), 5u);
}

TEST(ConfigOverride, ReplacesRatherThanAppends) {
  const RunConfig cfg = parse_run_config("model { n_layers: 2 layer_kinds: [ATTENTION, ATTENTION] }", "t",
                                         {"model.layer_kinds=[SHORT_CONV, SHORT_CONV]"});
  ASSERT_EQ(cfg.model().layer_kinds_size(), 2);
  EXPECT_EQ(cfg.model().layer_kinds(1), SHORT_CONV);
}

TEST(ConfigOverride, ErrorsNameTheAssignmentAndField) {
  std::string err = parse_error("", {"optimizer.lrr=3"});
  EXPECT_NE(err.find("--set optimizer.lrr=3"), std::string::npos) << err;
  EXPECT_NE(err.find("has no field 'lrr'"), std::string::npos) << err;
  EXPECT_NE(err.find("lr, beta1"), std::string::npos) << err;
  err = parse_error("", {"optimizer.lr=fast"});
  EXPECT_NE(err.find("cannot set cadtrain.config.OptimizerConfig.lr"), std::string::npos) << err;
  err = parse_error("", {"model.n_layers=0"});
  EXPECT_NE(err.find("--set model.n_layers=0: model.n_layers = 0 is below its minimum 1"), std::string::npos)
      << err;
  err = parse_error("", {"seed"});
  EXPECT_NE(err.find("expected field.path=value"), std::string::npos) << err;
  err = parse_error("", {"seed.x=1"});
  EXPECT_NE(err.find("is not a message field"), std::string::npos) << err;
}

TEST(ConfigOverride, LaterOverrideWins) {
  const RunConfig cfg = parse_run_config("", "t", {"seed=1", "seed=2"});
  EXPECT_EQ(cfg.seed(), 2u);
}

TEST(Config, WorldSizeCheck) {
  const RunConfig cfg = parse_run_config("parallel { data_parallel: 2 context_parallel: 2 } attention { strategy: RING }", "t");
  EXPECT_NO_THROW(check_world_size(cfg, 4));
  try {
    check_world_size(cfg, 3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the launcher started 3 ranks"), std::string::npos) << e.what();
  }
}

TEST(Config, EffectiveConfigRoundTripsWithEveryDefault) {
  const RunConfig cfg = parse_run_config("model { n_layers: 2 }", "t", {"optimizer.lr=0.01"});
  const std::string text = effective_config_text(cfg, "t + --set optimizer.lr=0.01");
  EXPECT_NE(text.find("rope_theta: 10000"), std::string::npos) << text;
  EXPECT_NE(text.find("strategy: LOCAL"), std::string::npos) << text;
  EXPECT_NE(text.find("# From: t + --set optimizer.lr=0.01"), std::string::npos);
  const fs::path path = fs::temp_directory_path() / "cadtrain_effective_config_test.pbtxt";
  write_effective_config(cfg, "test", path.string());
  const RunConfig back = load_run_config(path.string());
  fs::remove(path);
  EXPECT_EQ(back.model().n_layers(), 2u);
  EXPECT_DOUBLE_EQ(back.optimizer().lr(), 0.01);
  EXPECT_TRUE(back.model().has_rope_theta());  // defaults are explicit in the written file
}

TEST(Config, DerivedValues) {
  ModelConfig m;  // d_model 256, 4 heads, ffn multiple 64
  EXPECT_EQ(kv_heads(m), 4u);
  EXPECT_EQ(head_dim(m), 64u);
  EXPECT_EQ(ffn_hidden(m), 704u);  // 8/3 * 256 = 682.7 -> 704
  m.set_ffn_hidden(1000);
  EXPECT_EQ(ffn_hidden(m), 1000u);
  const RunConfig cfg = load_run_config(std::string(CADTRAIN_SOURCE_DIR) + "/configs/llama34b_512k_cad.pbtxt");
  EXPECT_EQ(required_world_size(cfg), 512u);
  EXPECT_EQ(trainer_ranks(cfg), 480u);
  EXPECT_EQ(head_dim(cfg.model()), 128u);
  EXPECT_EQ(run_dir(RunConfig{}), "runs/tiny");
}
