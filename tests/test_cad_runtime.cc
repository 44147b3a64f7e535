// The CAD runtime's pure parts: the wire descriptor (every corruption is rejected naming the
// sender; random corruptions never read out of bounds, which the sanitizer run checks) and the
// per-micro-batch plan (every query row dispatched exactly once, server K/V buffers filled
// exactly once, groups that run only when the rows they read exist, the same hash every time).
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "attention_servers/cad_from_config.h"
#include "attention_servers/cad_metrics.h"
#include "attention_servers/cad_step_plan.h"
#include "attention_servers/cad_wire.h"
#include "common/error.h"
#include "common/rng.h"
#include "configs/config.h"

namespace cadtrain::attention_servers {
namespace {

const WireHeader kHeader{3, WirePhase::FORWARD_IN, 5, 1, 42, 96};
const std::vector<WireSegment> kSegments = {{0, 10, 4, 0}, {1, 0, 8, 16}};

std::vector<uint64_t> good() {
  std::vector<uint64_t> w;
  append_descriptor(w, kHeader, kSegments);
  return w;
}

std::string error_of(const std::vector<uint64_t>& words, uint64_t payload = 96) {
  try {
    check_descriptor(words, 3, kHeader, kSegments, payload);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CadWire, AcceptsTheDescriptorThePlanExpects) {
  EXPECT_EQ(good().size(), descriptor_words(2));
  EXPECT_EQ(error_of(good()), "");
}

TEST(CadWire, RejectsEachCorruptionNamingTheSender) {
  struct Case {
    size_t word;
    uint64_t value;
    const char* says;
  };
  const std::vector<Case> cases = {
      {0, 0x12345678, "bad magic"},       {0, kWireMagic | 9ull << 32, "wire version 9"},
      {1, 2, "sender"},                   {2, 4, "phase"},
      {3, 6, "layer"},                    {4, 0, "group"},
      {5, 41, "serial"},                  {6, 3, "segment count"},
      {7, 95, "payload floats"},          {8, 1, "segment 0"},
      {9, 11, "segment 0"},               {14, 9, "segment 1"},
      {6, ~0ull, "segment count"},        {11, 1ull << 62, "segment 0"},
  };
  for (const Case& c : cases) {
    std::vector<uint64_t> w = good();
    w[c.word] = c.value;
    const std::string e = error_of(w);
    EXPECT_NE(e.find("from rank 3"), std::string::npos) << "word " << c.word << ": " << e;
    EXPECT_NE(e.find(c.says), std::string::npos) << "word " << c.word << ": " << e;
  }
  std::vector<uint64_t> w = good();
  EXPECT_NE(error_of({w.begin(), w.begin() + 5}).find("shorter than"), std::string::npos);
  EXPECT_NE(error_of({w.begin(), w.end() - 1}).find("words for 2 segments"), std::string::npos);
  w.push_back(0);
  EXPECT_NE(error_of(w).find("words for 2 segments"), std::string::npos);
  EXPECT_NE(error_of(good(), 95).find("95 payload floats arrived"), std::string::npos);
}

// Random words, random lengths, random flips: either accepted (only the exact descriptor) or a
// named error; the sanitizer build checks nothing is read out of bounds.
TEST(CadWire, FuzzedDescriptorsAreRejectedNeverOverread) {
  Rng rng(7);
  const std::vector<uint64_t> base = good();
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint64_t> w;
    const auto len = static_cast<size_t>(rng.next_u64() % (base.size() + 4));
    if (i % 2 == 0) {
      w.assign(base.begin(), base.begin() + static_cast<long>(std::min(len, base.size())));
      if (!w.empty()) w[rng.next_u64() % w.size()] ^= 1ull << (rng.next_u64() % 64);
    } else {
      for (size_t j = 0; j < len; ++j) w.push_back(rng.next_u64() % 4 == 0 ? rng.next_u64() : rng.next_u64() % 64);
    }
    const auto heap = std::make_unique<uint64_t[]>(w.size() + 1);  // exact-size copy for ASan
    std::copy(w.begin(), w.end(), heap.get());
    try {
      check_descriptor(std::span<const uint64_t>(heap.get(), w.size()), 3, kHeader, kSegments, 96);
      ++accepted;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("from rank 3"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(accepted, 0);
}

// ---------------------------------------------------------------------------------------------
// The step plan.

RankLayout rank_layout(std::vector<Sequence> seqs, int parts) {
  RankLayout r;
  r.seqs = std::move(seqs);
  for (const Sequence& s : r.seqs) r.rows += s.length;
  for (int p = 0; p < parts; ++p) r.parts.push_back({r.rows * p / parts, r.rows * (p + 1) / parts});
  return r;
}

// Three ranks: document 7 runs across all of them (positions 0..299), tiny documents, an empty rank
// layout is covered by the fourth rank.
std::vector<RankLayout> skewed(int parts) {
  return {rank_layout({{1, 0, 20}, {7, 0, 100}}, parts), rank_layout({{7, 100, 150}, {2, 0, 1}, {3, 0, 2}}, parts),
          rank_layout({{7, 250, 50}, {4, 0, 33}}, parts), rank_layout({}, parts)};
}

CadPlanOptions options(uint32_t servers, bool dedicated) {
  CadPlanOptions o;
  o.shard_tokens = 32;
  o.scheduler.servers = servers;
  o.scheduler.dedicated = dedicated;
  o.scheduler.tolerance = 0.1;
  o.scheduler.split_rows = 8;
  o.scheduler.bytes = row_bytes(4, 2, 16, 4);
  return o;
}

size_t part_of(const RankLayout& r, int64_t row) {
  for (size_t p = 0; p < r.parts.size(); ++p) {
    if (row < r.parts[p].end) return p;
  }
  return r.parts.size();
}

void check_plan(const CadStepPlan& plan) {
  std::map<std::pair<uint32_t, int64_t>, int> query_rows;  // (rank, row) -> times dispatched
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    const CadGroup& g = plan.groups[gi];
    EXPECT_LE(g.backward_part, g.forward_part);
    for (const ServerPlan& sp : g.plan.server_plans()) {
      std::vector<int> kv_filled(static_cast<size_t>(sp.kv_rows()), 0);
      for (const Dispatch& d : sp.inputs()) {
        const RankLayout& src = plan.ranks[d.src_rank()];
        for (int64_t i = 0; i < d.rows(); ++i) {
          const size_t part = part_of(src, d.src_row0() + i);
          EXPECT_LE(part, g.forward_part) << "group " << gi << " reads a row of a later part";
          if (d.kind() == Dispatch::QUERY) {
            ++query_rows[{d.src_rank(), d.src_row0() + i}];
            EXPECT_GE(part, g.backward_part) << "group " << gi << " backward runs before its dO exists";
          } else {
            ++kv_filled[static_cast<size_t>(d.dst_row0() + i)];
          }
        }
      }
      for (const ServerTask& t : sp.tasks()) {
        for (int64_t k = t.k0(); k < t.k1(); ++k) EXPECT_EQ(kv_filled[static_cast<size_t>(k)], 1) << "kv row " << k;
      }
    }
  }
  for (uint32_t r = 0; r < plan.trainers; ++r) {
    for (int64_t row = 0; row < plan.ranks[r].rows; ++row) {
      EXPECT_EQ((query_rows[{r, row}]), 1) << "rank " << r << " row " << row;
    }
  }
}

TEST(CadStepPlan, EveryQueryRowOnceAndGroupsRunWhenTheirRowsExist) {
  for (const int parts : {1, 2, 3}) {
    for (const bool dedicated : {false, true}) {
      const CadStepPlan plan = plan_cad_step(skewed(parts), options(dedicated ? 2 : 4, dedicated));
      SCOPED_TRACE(::testing::Message() << parts << " parts, dedicated " << dedicated);
      check_plan(plan);
      EXPECT_EQ(plan.parts, static_cast<size_t>(parts));
      EXPECT_EQ(plan_hash(plan), plan_hash(plan_cad_step(skewed(parts), options(dedicated ? 2 : 4, dedicated))));
    }
  }
}

TEST(CadStepPlan, ADocumentSplitAcrossRanksSeesItsWholePrefix) {
  // Document 7's shard at positions 250..299 (rank 2) must read K/V of positions 0..299.
  const CadStepPlan plan = plan_cad_step(skewed(1), options(4, false));
  bool found = false;
  for (const CadGroup& g : plan.groups) {
    for (const ServerPlan& sp : g.plan.server_plans()) {
      for (const ServerTask& t : sp.tasks()) {
        if (t.owner_rank() == 2 && t.owner_row0() == 0) {
          EXPECT_EQ(t.k_pos0(), 0);
          EXPECT_EQ(t.k1() - t.k0(), t.q_pos0() + (t.q1() - t.q0()));
          found = true;
        }
      }
    }
  }
  EXPECT_TRUE(found);
  // Two parts: the tail's group waits for the part that holds the head on rank 0.
  const CadStepPlan two = plan_cad_step(skewed(2), options(4, false));
  check_plan(two);
  EXPECT_GE(two.groups.size(), 1u);
}

TEST(CadStepPlan, RepeatedOrGappedPiecesAreSeparateDocuments) {
  // Document 9 twice at the same positions (e.g. drawn twice) and once after a gap: three
  // documents, each attending only to itself.
  const std::vector<RankLayout> ranks = {rank_layout({{9, 0, 10}, {9, 0, 10}}, 1), rank_layout({{9, 50, 5}}, 1)};
  const CadStepPlan plan = plan_cad_step(ranks, options(2, false));
  check_plan(plan);
  std::set<uint64_t> docs;
  for (const CadGroup& g : plan.groups) {
    for (const ServerPlan& sp : g.plan.server_plans()) {
      for (const ServerTask& t : sp.tasks()) {
        docs.insert(t.doc_id());
        EXPECT_LE(t.k1() - t.k0(), 10);
      }
    }
  }
  EXPECT_EQ(docs.size(), 3u);
}

TEST(CadStepPlan, RanksWithDifferentPartCountsAreAnError) {
  std::vector<RankLayout> ranks = skewed(2);
  ranks[1] = rank_layout(ranks[1].seqs, 1);
  try {
    plan_cad_step(ranks, options(4, false));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("trainer rank 1 has 1 nano-batch parts"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace cadtrain::attention_servers

namespace cadtrain::attention_servers {
namespace {

TEST(CadMetrics, ImbalanceIsMaxOverMeanOfTheServers) {
  std::vector<CadStats> ranks(3);
  ranks[0].task_cost = 10;  // rank 0 is a trainer only (DEDICATED): not in the server figures
  ranks[1].task_cost = 30;
  ranks[2].task_cost = 10;
  ranks[1].busy_s = 0.002;
  ranks[2].busy_s = 0.006;
  ranks[2].exchange_s = 0.004;
  ranks[0].bytes_sent = 100;
  ranks[2].bytes_sent = 50;
  ranks[1].scheduler_s = 0.0005;
  const CadStepMetrics m = summarize_cad_stats(ranks, {1, 2});
  EXPECT_DOUBLE_EQ(m.cost_imbalance, 1.5);
  EXPECT_DOUBLE_EQ(m.busy_imbalance, 1.5);
  EXPECT_DOUBLE_EQ(m.busy_max_s, 0.006);
  EXPECT_DOUBLE_EQ(m.idle_max_s, 0.004);
  EXPECT_EQ(m.bytes_sent, 150u);
  EXPECT_EQ(cad_step_line(m), "cad imb 1.50/1.50 busy 6.0ms idle 4.0ms 150B sched 0.5ms");
  EXPECT_EQ(cad_step_json(m)["servers"].size(), 2u);
  EXPECT_THROW(summarize_cad_stats(ranks, {3}), Error);
}

}  // namespace
}  // namespace cadtrain::attention_servers


namespace cadtrain::attention_servers {
namespace {

TEST(CadFromConfig, TakesServersShardsAndBackwardModeFromTheConfig) {
  config::RunConfig cfg;
  cfg.mutable_parallel()->set_data_parallel(3);
  cfg.mutable_attention()->set_strategy(config::CAD);
  auto* cad = cfg.mutable_attention()->mutable_cad();
  cad->set_shard_tokens(64);
  cad->set_backward(config::RESEND);
  CadRuntimeOptions o = cad_runtime_options(cfg);
  EXPECT_EQ(o.trainers, 3u);
  EXPECT_EQ(o.plan.scheduler.servers, 3u);
  EXPECT_FALSE(o.plan.scheduler.dedicated);
  EXPECT_TRUE(o.resend);
  EXPECT_EQ(o.plan.shard_tokens, 64);
  cad->set_mode(config::DEDICATED);
  cad->set_dedicated_servers(2);
  cad->set_backward(config::KEEP_ON_SERVER);
  o = cad_runtime_options(cfg);
  EXPECT_EQ(o.plan.scheduler.servers, 2u);
  EXPECT_TRUE(o.plan.scheduler.dedicated);
  EXPECT_FALSE(o.resend);
}

}  // namespace
}  // namespace cadtrain::attention_servers
