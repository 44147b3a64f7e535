// The planner's inputs and simulation: document-length files (bad ones named by file and line or
// entry), packings that place every token once, a cluster too small for the model, and the
// simulated strategies on a skewed batch (tokens conserved per strategy, packing's straggler
// idle above zero, CAD in place balanced where packing is not).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "attention_servers/from_config.h"
#include "attention_servers/planner.h"
#include "attention_servers/workload.h"
#include "common/error.h"
#include "configs/config.h"
#include "test_util.h"

using namespace cadtrain;
using namespace cadtrain::attention_servers;

namespace {

std::string error_of(const std::string& path) {
  try {
    load_doclens(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(Planner, DoclensFilesAreValidated) {
  test::TempDir dir;
  write(dir / "ok.json", "[3, 10,\n 7]");
  EXPECT_EQ(load_doclens(dir / "ok.json"), (std::vector<int64_t>{3, 10, 7}));
  write(dir / "empty.json", "[]");
  EXPECT_NE(error_of(dir / "empty.json").find("empty"), std::string::npos);
  write(dir / "neg.json", "[3, -2]");
  EXPECT_NE(error_of(dir / "neg.json").find("entry 1"), std::string::npos) << error_of(dir / "neg.json");
  write(dir / "frac.json", "[3, 2.5]");
  EXPECT_NE(error_of(dir / "frac.json").find("entry 1"), std::string::npos);
  write(dir / "bad.json", "[1, 2,\n3,\n 4 x]");
  const std::string bad = error_of(dir / "bad.json");
  EXPECT_NE(bad.find("bad.json:3"), std::string::npos) << bad;
  EXPECT_NE(error_of(dir / "missing.json").find("missing.json"), std::string::npos);
}

double quadratic(int64_t len, const void*) { return static_cast<double>(len) * static_cast<double>(len); }

TEST(Planner, PackingsPlaceEveryTokenOnce) {
  const std::vector<int64_t> docs = {5000, 300, 2000, 7, 1500, 900, 4100, 180};
  int64_t total = 0;
  for (int64_t d : docs) total += d;
  const BatchLayout in_order = pack_in_order(docs, 4, total / 4 + 1);
  int64_t placed = 0;
  for (const auto& rank : in_order.ranks) {
    int64_t n = 0;
    for (const Sequence& s : rank) n += s.length;
    EXPECT_LE(n, total / 4 + 1);
    placed += n;
  }
  EXPECT_EQ(placed, total);
  // Variable-length chunks: every document whole, exactly once; loads within one document's cost
  // of each other (largest first onto the least loaded rank).
  const BatchLayout by_cost = pack_by_cost(docs, 3, quadratic, nullptr);
  std::vector<int> seen(docs.size(), 0);
  std::vector<double> load;
  for (const auto& rank : by_cost.ranks) {
    double l = 0;
    for (const Sequence& s : rank) {
      EXPECT_EQ(s.length, docs[s.doc_id]);
      EXPECT_EQ(s.first_pos, 0);
      seen[s.doc_id]++;
      l += quadratic(s.length, nullptr);
    }
    load.push_back(l);
  }
  for (int n : seen) EXPECT_EQ(n, 1);
  // 5000^2 alone on one rank; 4100^2 + small ones on another; the rest on the third.
  EXPECT_EQ(by_cost.ranks[0].size(), 1u);
  EXPECT_EQ(by_cost.ranks[0][0].doc_id, 0u);
}

config::RunConfig small_cluster() {
  config::RunConfig cfg = config::load_run_config(std::string(CADTRAIN_SOURCE_DIR) + "/configs/plan_llama8b_h200.pbtxt",
                                                  {"cluster.gpus=64", "planner.batches=2", "planner.doclens_file=",
                                                   "data.tokens_per_micro_batch=65536", "data.synth.mean_doc_tokens=8192",
                                                   "data.synth.max_doc_tokens=131072",
                                                   "planner.max_doc_tokens=131072", "attention.cad.shard_tokens=1024"});
  return cfg;
}

TEST(Planner, ClusterThatCannotHoldTheModelIsNamed) {
  config::RunConfig cfg = small_cluster();
  cfg.mutable_cluster()->set_hbm_bytes(4e9);
  try {
    describe_machine(cfg);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cluster.hbm_bytes"), std::string::npos) << e.what();
  }
  cfg = small_cluster();
  cfg.mutable_cluster()->set_gpus(60);
  EXPECT_THROW(describe_machine(cfg), Error);  // not a multiple of tensor_parallel 8
}

TEST(Planner, StrategiesOnASkewedBatch) {
  const PlannerReport rep = run_planner(small_cluster());
  std::map<std::string, StrategyResult> by;
  for (const auto& r : rep.mean) by[r.strategy] = r;
  for (const char* s : {"packing_dp", "percp_allgather", "ring", "tokenring", "cad_inplace", "cad_dedicated"}) {
    ASSERT_TRUE(by.count(s)) << s;
  }
  EXPECT_DOUBLE_EQ(by["packing_dp"].speedup_vs_packing, 1.0);
  EXPECT_GT(by["packing_dp"].idle_fraction, 0.0);
  EXPECT_LT(by["cad_inplace"].compute_imbalance, by["packing_dp"].compute_imbalance);
  EXPECT_LE(by["cad_inplace"].compute_imbalance, 1.05);
  EXPECT_GT(by["cad_inplace"].bytes_published_count, 0.0);
  // Every strategy trains the same tokens.
  for (const auto& batch : rep.batches) {
    for (const auto& r : batch) {
      double tokens = 0;
      for (const auto& k : r.ranks) tokens += k.tokens;
      EXPECT_DOUBLE_EQ(tokens, 65536.0 * 8) << r.strategy;
    }
  }
}

}  // namespace

// The shipped CPU calibration table (bench/cad_calibrate --out) loads the way its header says a
// user passes it (--set attention.cad.calibration="$(cat FILE)"), and calibrate_cost switches the
// cost model from causal pairs to effective pairs = pairs * best rate / measured rate.
TEST(Planner, ShippedCalibrationTableChangesTheCostModel) {
  const std::string path = std::string(CADTRAIN_SOURCE_DIR) + "/configs/cad_calibration_cpu.txt";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::stringstream text;
  text << in.rdbuf();
  const std::string config = std::string(CADTRAIN_SOURCE_DIR) + "/configs/plan_llama8b_h200.pbtxt";
  const config::RunConfig on =
      config::load_run_config(config, {"attention.cad.calibration=" + text.str(), "attention.cad.calibrate_cost=true"});
  const config::RunConfig off = config::load_run_config(config, {"attention.cad.calibration=" + text.str()});
  const auto& table = on.attention().cad().calibration();
  ASSERT_GE(table.size(), 4);
  const CostModel calibrated = cost_model(on), pairs = cost_model(off);
  ASSERT_TRUE(calibrated.calibrated());
  EXPECT_FALSE(pairs.calibrated());
  double best = 0, worst = 1e300;
  for (const auto& p : table) {
    best = std::max(best, p.pairs_per_s());
    worst = std::min(worst, p.pairs_per_s());
  }
  EXPECT_DOUBLE_EQ(calibrated.best_rate(), best);
  EXPECT_LT(worst, best) << "a flat table would not change the schedule";
  for (const auto& p : table) {
    const int64_t q = static_cast<int64_t>(p.q()), k = static_cast<int64_t>(p.k());
    const kernels::AttentionTask task{0, q, 0, k, k - q, 0, true};  // q rows ending on the diagonal
    const double n = static_cast<double>(kernels::task_pairs(task));
    EXPECT_DOUBLE_EQ(pairs.cost(task), n);
    EXPECT_NEAR(calibrated.rate(q, k), p.pairs_per_s(), 1e-9 * p.pairs_per_s()) << q << " " << k;
    EXPECT_NEAR(calibrated.cost(task), n * best / p.pairs_per_s(), 1e-9 * n * best / p.pairs_per_s()) << q << " " << k;
    EXPECT_GE(calibrated.cost(task), n * (1 - 1e-12));  // nothing runs above the best rate
  }
}
