// attention_servers: task formation, scheduler and plan, checked against facts computed here
// independently of the library, on random and adversarial batches (one giant document split over
// every rank, thousands of tiny ones, more servers than documents, tolerance 0, one server):
// - every query row of every rank is covered by exactly one server task;
// - every task's KV is exactly its document's causal prefix (traced row by row through the
//   plan's dispatches back to the ranks' rows and their true positions);
// - total causal pairs are conserved (sum over documents of n(n+1)/2, not task_pairs);
// - balance within tolerance whenever the plan says balanced, and balanced where it must be;
// - bytes equal a brute-force count over row sets (dedup per server, local rows free);
// - a repeated run gives a byte-identical plan;
// - executing the plan with the fused kernel gives the same O and LSE as whole-document attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "attention_servers/plan.h"
#include "common/error.h"
#include "common/rng.h"
#include "kernels/attention_tasks.h"
#include "kernels/core_attention.h"

using namespace cadtrain;
using namespace cadtrain::attention_servers;

namespace {

// Documents of the given lengths packed rank after rank, tokens_per_rank each; a document that
// does not fit continues on the next rank with its true positions (CAD packing, DESIGN 6).
BatchLayout pack(const std::vector<int64_t>& lengths, uint32_t ranks, int64_t tokens_per_rank) {
  BatchLayout b;
  b.ranks.resize(ranks);
  uint32_t r = 0;
  int64_t used = 0;
  for (size_t d = 0; d < lengths.size() && r < ranks; ++d) {
    int64_t pos = 0;
    while (pos < lengths[d] && r < ranks) {
      const int64_t take = std::min(lengths[d] - pos, tokens_per_rank - used);
      b.ranks[r].push_back(Sequence{1000 + d, pos, take});
      pos += take;
      used += take;
      if (used == tokens_per_rank) {
        ++r;
        used = 0;
      }
    }
  }
  return b;
}

std::vector<int64_t> random_lengths(uint64_t seed, size_t n, int64_t max_len) {
  Rng rng(seed);
  std::vector<int64_t> out;
  for (size_t i = 0; i < n; ++i) {
    // Long-tailed: mostly short, some near max_len.
    const double u = rng.uniform();
    out.push_back(1 + static_cast<int64_t>(std::pow(u, 4.0) * static_cast<double>(max_len - 1)));
  }
  return out;
}

SchedulerOptions options(uint32_t servers, bool dedicated, double tol, int64_t split = 16) {
  SchedulerOptions o;
  o.servers = servers;
  o.dedicated = dedicated;
  o.tolerance = tol;
  o.split_rows = split;
  o.bytes = row_bytes(4, 2, 8, 2);
  return o;
}

// (doc id, position) of every row of every rank, from the layout alone.
using RowId = std::pair<uint64_t, int64_t>;
std::vector<std::vector<RowId>> row_ids(const BatchLayout& b) {
  std::vector<std::vector<RowId>> ids(b.ranks.size());
  for (size_t r = 0; r < b.ranks.size(); ++r) {
    for (const Sequence& s : b.ranks[r]) {
      for (int64_t i = 0; i < s.length; ++i) ids[r].push_back({s.doc_id, s.first_pos + i});
    }
  }
  return ids;
}

// Checks every invariant of a plan of `b`; returns the plan.
AttentionPlan check_plan(const BatchLayout& b, int64_t shard, const SchedulerOptions& o) {
  const AttentionPlan plan = plan_step(b, shard, CostModel(), o);
  const auto ids = row_ids(b);
  std::map<uint64_t, int64_t> doc_first, doc_len;
  for (const auto& rank : ids) {
    for (const auto& [doc, pos] : rank) {
      auto [it, fresh] = doc_first.emplace(doc, pos);
      if (!fresh) it->second = std::min(it->second, pos);
      doc_len[doc]++;
    }
  }
  uint64_t expect_pairs = 0;
  for (const auto& [doc, n] : doc_len) expect_pairs += static_cast<uint64_t>(n) * static_cast<uint64_t>(n + 1) / 2;

  EXPECT_EQ(plan.server_plans_size(), static_cast<int>(o.servers));
  std::vector<std::vector<int>> covered(ids.size());
  for (size_t r = 0; r < ids.size(); ++r) covered[r].assign(ids[r].size(), 0);
  uint64_t pairs = 0;
  int64_t q_in = 0, kv_in = 0;
  double load_sum = 0;
  for (const ServerPlan& sp : plan.server_plans()) {
    // Buffer row -> (rank, row), from the dispatches.
    std::vector<std::pair<uint32_t, int64_t>> qsrc(static_cast<size_t>(sp.q_rows()), {~0u, -1});
    std::vector<std::pair<uint32_t, int64_t>> kvsrc(static_cast<size_t>(sp.kv_rows()), {~0u, -1});
    for (const Dispatch& d : sp.inputs()) {
      auto& dst = d.kind() == Dispatch::QUERY ? qsrc : kvsrc;
      for (int64_t i = 0; i < d.rows(); ++i) {
        auto& slot = dst.at(static_cast<size_t>(d.dst_row0() + i));
        EXPECT_EQ(slot.second, -1) << "buffer row filled twice";
        slot = {d.src_rank(), d.src_row0() + i};
      }
    }
    std::set<std::pair<uint32_t, int64_t>> kv_rows_needed, q_rows_remote;
    double load = 0;
    for (const ServerTask& t : sp.tasks()) {
      const uint64_t qn = static_cast<uint64_t>(t.q1() - t.q0());
      for (int64_t i = t.q0(); i < t.q1(); ++i) {
        const auto [rank, row] = qsrc.at(static_cast<size_t>(i));
        EXPECT_LT(rank, ids.size());
        if (rank >= ids.size()) continue;
        EXPECT_EQ(ids[rank][static_cast<size_t>(row)], RowId(t.doc_id(), t.q_pos0() + (i - t.q0())));
        covered[rank][static_cast<size_t>(row)]++;
        if (rank != sp.rank()) q_rows_remote.insert({rank, row});
      }
      // KV: exactly positions [first position of the document, end of the query shard).
      EXPECT_EQ(t.k_pos0(), doc_first.at(t.doc_id()));
      EXPECT_EQ(t.k1() - t.k0(), t.q_pos0() + static_cast<int64_t>(qn) - t.k_pos0());
      for (int64_t j = t.k0(); j < t.k1(); ++j) {
        const auto [rank, row] = kvsrc.at(static_cast<size_t>(j));
        EXPECT_LT(rank, ids.size());
        if (rank >= ids.size()) continue;
        EXPECT_EQ(ids[rank][static_cast<size_t>(row)], RowId(t.doc_id(), t.k_pos0() + (j - t.k0())));
        if (rank != sp.rank()) kv_rows_needed.insert({rank, row});
      }
      const uint64_t before = static_cast<uint64_t>(t.q_pos0() - t.k_pos0());
      EXPECT_EQ(t.pairs(), qn * before + qn * (qn + 1) / 2);
      pairs += t.pairs();
      load += t.cost();
    }
    EXPECT_DOUBLE_EQ(sp.load(), load);
    load_sum += load;
    EXPECT_EQ(sp.q_bytes_in(), static_cast<int64_t>(q_rows_remote.size()) * plan.q_row_bytes());
    EXPECT_EQ(sp.kv_bytes_in(), static_cast<int64_t>(kv_rows_needed.size()) * plan.kv_row_bytes());
    EXPECT_EQ(sp.out_bytes(), static_cast<int64_t>(q_rows_remote.size()) * (plan.q_row_bytes() + plan.lse_row_bytes()));
    q_in += sp.q_bytes_in() + sp.out_bytes();
    kv_in += sp.kv_bytes_in();
    if (plan.balanced()) {
      EXPECT_LE(std::abs(load - plan.target_load()), plan.tolerance() * plan.target_load() * (1 + 1e-9) + 1e-9)
          << "server " << sp.server();
    }
  }
  for (size_t r = 0; r < ids.size(); ++r) {
    for (size_t i = 0; i < ids[r].size(); ++i) EXPECT_EQ(covered[r][i], 1) << "rank " << r << " row " << i;
  }
  EXPECT_EQ(pairs, expect_pairs);
  EXPECT_EQ(plan.total_pairs(), expect_pairs);
  EXPECT_NEAR(load_sum, static_cast<double>(expect_pairs), 1e-9 * static_cast<double>(expect_pairs));
  EXPECT_EQ(plan.bytes().forward(), q_in + kv_in);
  EXPECT_GE(plan.bytes().charging_local_kv(), plan.bytes().forward());
  EXPECT_GE(plan.bytes().without_dedup(), plan.bytes().forward());
  if (!plan.balanced()) {
    EXPECT_FALSE(plan.reason().empty());
  }
  // Deterministic: the same input gives the same bytes, on the heap or on an arena.
  EXPECT_EQ(plan_step(b, shard, CostModel(), o).SerializeAsString(), plan.SerializeAsString());
  google::protobuf::Arena arena;
  EXPECT_EQ(build_plan(schedule_tasks(form_tasks(b, shard), CostModel(), o), o.bytes, shard, &arena)->SerializeAsString(),
            plan.SerializeAsString());
  return plan;
}

TEST(AttentionServers, RandomBatchesInplaceBalanceAndInvariants) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const uint32_t ranks = 4 + static_cast<uint32_t>(seed % 5);
    const BatchLayout b = pack(random_lengths(seed, 400, 3000), ranks, 2048);
    const AttentionPlan plan = check_plan(b, 64, options(ranks, false, 0.1));
    EXPECT_TRUE(plan.balanced()) << "seed " << seed << ": " << plan.reason();
    EXPECT_LE(plan.imbalance(), 1.1 + 1e-9);
  }
}

TEST(AttentionServers, RandomBatchesDedicated) {
  for (uint64_t seed = 11; seed <= 14; ++seed) {
    const BatchLayout b = pack(random_lengths(seed, 300, 4000), 6, 2048);
    const AttentionPlan plan = check_plan(b, 128, options(4 + static_cast<uint32_t>(seed % 3), true, 0.05));
    EXPECT_TRUE(plan.balanced()) << plan.reason();
    EXPECT_TRUE(plan.dedicated());
    for (const ServerPlan& sp : plan.server_plans()) EXPECT_GE(sp.rank(), 6u);
  }
}

TEST(AttentionServers, OneGiantDocumentOverEveryRank) {
  const BatchLayout b = pack({8 * 1024}, 8, 1024);
  const AttentionPlan plan = check_plan(b, 128, options(8, false, 0.1));
  EXPECT_TRUE(plan.balanced()) << plan.reason();
  // Without balancing the last rank would hold 15x the first rank's pairs.
  EXPECT_GT(plan.moves(), 0u);
}

TEST(AttentionServers, ThousandsOfTinyDocuments) {
  std::vector<int64_t> lengths(3000);
  Rng rng(5);
  for (auto& l : lengths) l = 1 + static_cast<int64_t>(rng.below(12));
  const BatchLayout b = pack(lengths, 4, 4096);
  const AttentionPlan plan = check_plan(b, 128, options(4, false, 0.02));
  EXPECT_TRUE(plan.balanced()) << plan.reason();
}

TEST(AttentionServers, MoreServersThanDocuments) {
  const BatchLayout b = pack({600, 300, 200}, 2, 550);
  const AttentionPlan plan = check_plan(b, 64, options(16, true, 0.1, 16));
  EXPECT_TRUE(plan.balanced()) << plan.reason();  // shards split finely enough: 1100 rows
  const AttentionPlan coarse = check_plan(b, 256, options(64, true, 0.1, 256));
  EXPECT_FALSE(coarse.balanced());
  EXPECT_NE(coarse.reason().find("indivisible"), std::string::npos) << coarse.reason();
}

TEST(AttentionServers, ToleranceZero) {
  // Equal documents on every rank: already exactly balanced, nothing moves.
  BatchLayout even;
  even.ranks.resize(4);
  for (uint32_t r = 0; r < 4; ++r) even.ranks[r] = {Sequence{r, 0, 100}, Sequence{10 + r, 0, 28}};
  const AttentionPlan exact = check_plan(even, 32, options(4, false, 0.0));
  EXPECT_TRUE(exact.balanced());
  EXPECT_EQ(exact.moves(), 0u);
  // A skewed batch cannot be balanced exactly at 16-row granularity: reported, not pretended.
  const BatchLayout skew = pack({1000, 24, 24, 24}, 4, 268);
  const AttentionPlan p = check_plan(skew, 64, options(4, false, 0.0));
  EXPECT_FALSE(p.balanced());
  EXPECT_FALSE(p.reason().empty());
  EXPECT_LT(p.imbalance(), 1.05);  // still as close as the granularity allows
}

TEST(AttentionServers, SingleServer) {
  const BatchLayout b = pack(random_lengths(3, 50, 500), 1, 4000);
  const AttentionPlan plan = check_plan(b, 64, options(1, false, 0.0));
  EXPECT_TRUE(plan.balanced());
  EXPECT_EQ(plan.bytes().forward(), 0);  // everything is local
  const AttentionPlan ded = check_plan(b, 64, options(1, true, 0.0));
  EXPECT_TRUE(ded.balanced());
  EXPECT_GT(ded.bytes().forward(), 0);
}

TEST(AttentionServers, IndivisiblePieceAboveTargetIsReported) {
  // One document of 4 shards of 512 rows that may not split: the last shard holds 7/16 of the
  // pairs, above 1.1 F for 4 servers.
  const BatchLayout b = pack({2048}, 4, 512);
  const AttentionPlan plan = check_plan(b, 512, options(4, false, 0.1, 512));
  EXPECT_FALSE(plan.balanced());
  EXPECT_NE(plan.reason().find("indivisible piece"), std::string::npos) << plan.reason();
  EXPECT_NE(plan.reason().find("document 1000"), std::string::npos) << plan.reason();
}

TEST(AttentionServers, BytesOfAHandWorkedExample) {
  // Rank 0 holds document A positions [0, 4); rank 1 holds A [4, 8). Shards of 4, two servers
  // INPLACE, no moves possible at split 4 without overshoot? The second shard costs 26 pairs, the
  // first 10: F = 18, tolerance 1: nothing moves. Server 1 needs A[0,4) from rank 0 (4 KV rows).
  BatchLayout b;
  b.ranks = {{Sequence{7, 0, 4}}, {Sequence{7, 4, 4}}};
  SchedulerOptions o = options(2, false, 1.0, 4);
  o.bytes = RowBytes{10, 100, 1};
  const AttentionPlan plan = check_plan(b, 4, o);
  EXPECT_EQ(plan.moves(), 0u);
  EXPECT_EQ(plan.server_plans(1).kv_bytes_in(), 4 * 100);
  EXPECT_EQ(plan.server_plans(1).q_bytes_in(), 0);
  EXPECT_EQ(plan.bytes().forward(), 400);
  EXPECT_EQ(plan.bytes().charging_local_kv(), 800 + 400);  // server 0 charged 4 rows, server 1 8
  EXPECT_EQ(plan.bytes().backward_keep(), 400);            // dK, dV of the 4 remote rows
}

TEST(AttentionServers, KvSentOncePerServer) {
  // Three shards of one document all moved to a dedicated server: its prefix is sent once.
  BatchLayout b;
  b.ranks = {{Sequence{1, 0, 96}}};
  SchedulerOptions o = options(1, true, 0.1, 32);
  o.bytes = RowBytes{1, 1000, 0};
  const AttentionPlan plan = check_plan(b, 32, o);
  EXPECT_EQ(plan.server_plans(0).kv_rows(), 96);
  EXPECT_EQ(plan.bytes().forward(), 96 * 1000 + 96 * 2);
  EXPECT_EQ(plan.bytes().without_dedup(), (32 + 64 + 96) * 1000 + 96 * 2);
}

TEST(AttentionServers, BadLayoutNamesTheDocument) {
  BatchLayout gap;
  gap.ranks = {{Sequence{5, 0, 10}}, {Sequence{5, 12, 4}}};
  try {
    form_tasks(gap, 8);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("document 5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("gap"), std::string::npos) << e.what();
  }
  BatchLayout neg;
  neg.ranks = {{Sequence{5, -1, 10}}};
  EXPECT_THROW(form_tasks(neg, 8), Error);
  BatchLayout one;
  one.ranks = {{Sequence{1, 0, 4}}};
  EXPECT_THROW(schedule_tasks(form_tasks(one, 8), CostModel(), options(3, false, 0.1)), Error);  // INPLACE: 1 per rank
}

TEST(AttentionServers, ShardsFollowDocumentPositions) {
  BatchLayout b;
  b.ranks = {{Sequence{1, 0, 100}}, {Sequence{1, 100, 60}, Sequence{2, 0, 10}}};
  const TaskSet set = form_tasks(b, 64);
  // Document 1: [0,64) [64,100) on rank 0, [100,128) [128,160) on rank 1; document 2: [0,10).
  ASSERT_EQ(set.tasks.size(), 5u);
  EXPECT_EQ(set.tasks[1].pos0, 64);
  EXPECT_EQ(set.tasks[1].rows, 36);
  EXPECT_EQ(set.tasks[2].owner, 1u);
  EXPECT_EQ(set.tasks[2].row0, 0);
  EXPECT_EQ(set.tasks[2].rows, 28);
  EXPECT_EQ(set.tasks[3].pos0, 128);
  EXPECT_EQ(set.tasks[4].row0, 60);
  const kernels::AttentionTask k = kernel_task(set, set.tasks[3], 5, 7);
  EXPECT_EQ(k.k1 - k.k0, 160);
  EXPECT_EQ(kernels::task_pairs(k), 32u * 128 + 32u * 33 / 2);
}

TEST(AttentionServers, CalibratedCostInterpolatesAndValidates) {
  std::vector<CalibrationPoint> t = {{128, 128, 1e9}, {128, 1024, 4e9}, {1024, 1024, 8e9}};
  const CostModel m(t, "test");
  EXPECT_DOUBLE_EQ(m.rate(128, 128), 1e9);
  EXPECT_DOUBLE_EQ(m.rate(1024, 1024), 8e9);
  EXPECT_NEAR(m.rate(128, 362), 2.5e9, 0.01e9);  // halfway in log k
  EXPECT_DOUBLE_EQ(m.rate(4096, 8192), 8e9);     // clamped
  kernels::AttentionTask small{0, 128, 0, 128, 0, 0, true};
  EXPECT_DOUBLE_EQ(m.cost(small), 128.0 * 129 / 2 * 8);  // 8x slower than the best rate
  std::vector<CalibrationPoint> holey = {{128, 128, 1e9}, {1024, 1024, 8e9}, {128, 2048, 1e9}};
  try {
    CostModel bad(holey, "attention.cad.calibration");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention.cad.calibration"), std::string::npos);
  }
  EXPECT_THROW(CostModel({{0, 1, 1.0}}, "x"), Error);
}

// Executes a plan on the CPU kernel: gather rows per dispatch, one fused call per server,
// scatter O and LSE back; compares with whole-document attention.
TEST(AttentionServers, ExecutingThePlanMatchesWholeDocumentAttention) {
  const int64_t hq = 4, hk = 2, D = 8;
  const BatchLayout b = pack({700, 90, 1, 300, 450, 129}, 3, 560);
  const AttentionPlan plan = plan_step(b, 64, CostModel(), options(3, false, 0.05, 16));
  ASSERT_GT(plan.moves(), 0u);
  const auto ids = row_ids(b);
  // Global reference layout: documents whole, in the order of their ids.
  std::map<uint64_t, int64_t> first_row, len;
  for (const auto& rank : ids) for (const auto& [doc, pos] : rank) len[doc]++;
  std::vector<int32_t> cu = {0};
  for (const auto& [doc, n] : len) {
    first_row[doc] = cu.back();
    cu.push_back(cu.back() + static_cast<int32_t>(n));
  }
  const int64_t N = cu.back();
  Rng rng(9);
  auto randv = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(rng.normal());
    return v;
  };
  const std::vector<float> q = randv(N * hq * D), k = randv(N * hk * D), v = randv(N * hk * D);
  std::vector<float> o_ref(static_cast<size_t>(N * hq * D)), lse_ref(static_cast<size_t>(N * hq));
  const kernels::AttentionShape shape{N, hq, hk, D, 1.0f / std::sqrt(static_cast<float>(D))};
  kernels::SequenceLayout whole;
  whole.cu_seqlens = cu.data();
  whole.n_seqs = static_cast<int64_t>(cu.size() - 1);
  kernels::attention_forward_all(*kernels::make_local_reference_attention(), o_ref.data(), lse_ref.data(), q.data(),
                                 k.data(), v.data(), shape, whole);
  // Row of (rank, row) in the global layout (the doc's first position in the batch is 0 here).
  auto global = [&](uint32_t rank, int64_t row) {
    const auto& [doc, pos] = ids[rank][static_cast<size_t>(row)];
    return first_row.at(doc) + pos;
  };
  std::vector<float> o(o_ref.size(), NAN), lse(lse_ref.size(), NAN);
  for (const ServerPlan& sp : plan.server_plans()) {
    std::vector<float> sq(static_cast<size_t>(sp.q_rows() * hq * D)), sk(static_cast<size_t>(sp.kv_rows() * hk * D)),
        sv(sk.size());
    std::vector<std::pair<int64_t, int64_t>> back;  // server q row -> global row
    for (const Dispatch& d : sp.inputs()) {
      for (int64_t i = 0; i < d.rows(); ++i) {
        const int64_t g = global(d.src_rank(), d.src_row0() + i), s = d.dst_row0() + i;
        if (d.kind() == Dispatch::QUERY) {
          std::copy_n(&q[static_cast<size_t>(g * hq * D)], hq * D, &sq[static_cast<size_t>(s * hq * D)]);
          back.push_back({s, g});
        } else {
          std::copy_n(&k[static_cast<size_t>(g * hk * D)], hk * D, &sk[static_cast<size_t>(s * hk * D)]);
          std::copy_n(&v[static_cast<size_t>(g * hk * D)], hk * D, &sv[static_cast<size_t>(s * hk * D)]);
        }
      }
    }
    std::vector<kernels::AttentionTask> tasks;
    for (const ServerTask& t : sp.tasks()) tasks.push_back({t.q0(), t.q1(), t.k0(), t.k1(), t.q_pos0(), t.k_pos0(), true});
    std::vector<float> so(sq.size()), slse(static_cast<size_t>(sp.q_rows() * hq));
    kernels::attention_forward_tasks(so.data(), slse.data(), sq.data(), sk.data(), sv.data(), tasks,
                                     {hq, hk, D, shape.softmax_scale});
    for (const auto& [s, g] : back) {
      std::copy_n(&so[static_cast<size_t>(s * hq * D)], hq * D, &o[static_cast<size_t>(g * hq * D)]);
      std::copy_n(&slse[static_cast<size_t>(s * hq)], hq, &lse[static_cast<size_t>(g * hq)]);
    }
  }
  for (size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], o_ref[i], 2e-5f * (1 + std::abs(o_ref[i]))) << i;
  for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], lse_ref[i], 1e-5f * (1 + std::abs(lse_ref[i]))) << i;
}

}  // namespace
