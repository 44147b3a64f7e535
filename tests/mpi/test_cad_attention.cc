// CAD attention under mpirun (2, 3 and 4 ranks) against the single-process fused task attention on
// the whole micro-batch. Every rank builds the same global problem; the trainer ranks each take a
// contiguous slice of its rows (so a long document runs across ranks, with true positions), run
// CadAttention with 1 or 2 nano-batch parts and either backward mode, and compare their rows of O,
// LSE, dQ, dK and dV with the reference's. DEDICATED runs make the last world ranks servers
// (run_cad_server) and the rest trainers.
// Tolerance: relative 1e-5 per element against max(|ref|, rms(ref)) (floor 1e-2 for the gradients,
// as the kernel tests): a server runs a shard against its prefix where one process runs the whole
// sequence, so sums run in another order (worst seen: 2.5e-6, in dK).
// Also: every rank holds the same plan (hashes all-gathered), and the payload bytes the code sent,
// summed over ranks, equal the plan's byte counts (plan.proto PlanBytes) exactly.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "attention_servers/cad_attention.h"
#include "kernels/core_attention.h"
#include "tests/kernel_test_util.h"
#include "tests/mpi/mpi_test_main.h"

namespace cadtrain {
namespace {

using attention_servers::CadAttention;
using attention_servers::CadRuntimeOptions;
using kernels::AttentionIO;
using kernels::AttentionShape;
using kernels::RowRange;
using kernels::SequenceLayout;
using test::world;

constexpr int64_t kQHeads = 4, kKvHeads = 2, kDim = 16;
constexpr float kScale = 0.25f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Tensors {
  std::vector<float> q, k, v, dout, o, lse, dq, dk, dv;
};

std::vector<float> rows_of(const std::vector<float>& x, int64_t r0, int64_t r1, int64_t width) {
  return {x.begin() + r0 * width, x.begin() + r1 * width};
}
std::vector<double> rows_double(const std::vector<float>& x, int64_t r0, int64_t r1, int64_t width) {
  return {x.begin() + r0 * width, x.begin() + r1 * width};
}

struct Case {
  std::vector<int32_t> lengths;
  int parts = 1;
  bool resend = false;
  uint32_t dedicated = 0;   // server-only ranks (0: INPLACE)
  bool last_rank_empty = false;
};

CadRuntimeOptions options_for(const Case& c, uint32_t trainers) {
  CadRuntimeOptions o;
  o.trainers = trainers;
  o.resend = c.resend;
  o.plan.shard_tokens = 32;
  o.plan.scheduler.servers = c.dedicated > 0 ? c.dedicated : trainers;
  o.plan.scheduler.dedicated = c.dedicated > 0;
  o.plan.scheduler.tolerance = 0.1;
  o.plan.scheduler.split_rows = 8;
  o.plan.scheduler.bytes = attention_servers::row_bytes(kQHeads, kKvHeads, kDim, 4);
  return o;
}

void check_case(const Case& c) {
  parallel::Communicator& comm = world();
  const int W = comm.size(), me = comm.rank();
  if (c.dedicated >= static_cast<uint32_t>(W)) GTEST_SKIP() << "needs more ranks than servers";
  const auto T = static_cast<uint32_t>(W) - c.dedicated;
  const CadRuntimeOptions opts = options_for(c, T);
  const std::string what = "rank " + std::to_string(me) + "/" + std::to_string(W) + ", " + std::to_string(c.parts) +
                           " parts, " + (c.resend ? "RESEND" : "KEEP") + ", " +
                           (c.dedicated > 0 ? std::to_string(c.dedicated) + " dedicated" : std::string("in place")) +
                           ": ";
  const int layer = 1;
  if (me >= static_cast<int>(T)) {  // a dedicated server
    attention_servers::run_cad_server(comm, opts);
  } else {
    std::vector<int32_t> cu = {0};
    for (const int32_t len : c.lengths) cu.push_back(cu.back() + len);
    const int64_t n = cu.back(), qd = kQHeads * kDim, kvd = kKvHeads * kDim;
    std::vector<int32_t> first_pos;
    std::vector<uint64_t> docs;
    for (size_t s = 0; s < c.lengths.size(); ++s) {
      first_pos.push_back(s == 1 ? 30 : 0);  // the second sequence is a document's tail
      docs.push_back(100 + s);
    }
    const SequenceLayout global{cu.data(), static_cast<int64_t>(c.lengths.size()), first_pos.data(), docs.data()};
    Tensors g;
    g.q = test::randn(static_cast<size_t>(n * qd), 1);
    g.k = test::randn(static_cast<size_t>(n * kvd), 2);
    g.v = test::randn(static_cast<size_t>(n * kvd), 3);
    g.dout = test::randn(static_cast<size_t>(n * qd), 4);
    g.o.assign(g.q.size(), 0.0f);
    g.lse.assign(static_cast<size_t>(n * kQHeads), 0.0f);
    g.dq.assign(g.q.size(), 0.0f);
    g.dk.assign(g.k.size(), 0.0f);
    g.dv.assign(g.k.size(), 0.0f);
    const auto local = kernels::make_local_task_attention();
    const AttentionShape gshape{n, kQHeads, kKvHeads, kDim, kScale};
    kernels::attention_forward_all(*local, g.o.data(), g.lse.data(), g.q.data(), g.k.data(), g.v.data(), gshape, global);
    kernels::attention_backward_all(*local, g.dq.data(), g.dk.data(), g.dv.data(), g.dout.data(), g.q.data(),
                                    g.k.data(), g.v.data(), g.o.data(), g.lse.data(), gshape, global);

    // This trainer's contiguous slice of rows, cut into sequences with true positions.
    const uint32_t holders = c.last_rank_empty && T > 1 ? T - 1 : T;
    const auto r = static_cast<uint32_t>(me);
    const int64_t r0 = r < holders ? n * r / holders : n, r1 = r < holders ? n * (r + 1) / holders : n;
    std::vector<int32_t> lcu = {0}, lpos;
    std::vector<uint64_t> ldocs;
    for (size_t s = 0; s < c.lengths.size(); ++s) {
      const int64_t a = std::max<int64_t>(cu[s], r0), b = std::min<int64_t>(cu[s + 1], r1);
      if (a >= b) continue;
      lcu.push_back(static_cast<int32_t>(b - r0));
      lpos.push_back(static_cast<int32_t>(first_pos[s] + (a - cu[s])));
      ldocs.push_back(docs[s]);
    }
    const int64_t m = r1 - r0;
    const SequenceLayout layout{lcu.data(), static_cast<int64_t>(ldocs.size()), lpos.data(), ldocs.data()};
    Tensors t;
    t.q = rows_of(g.q, r0, r1, qd);
    t.k = rows_of(g.k, r0, r1, kvd);
    t.v = rows_of(g.v, r0, r1, kvd);
    t.dout = rows_of(g.dout, r0, r1, qd);
    t.o.assign(static_cast<size_t>(m * qd), kNaN);
    t.lse.assign(static_cast<size_t>(m * kQHeads), kNaN);
    t.dq.assign(static_cast<size_t>(m * qd), kNaN);
    t.dk.assign(static_cast<size_t>(m * kvd), 0.0f);  // accumulated into
    t.dv.assign(static_cast<size_t>(m * kvd), 0.0f);

    CadAttention cad(comm, opts);
    std::vector<RowRange> parts;
    for (int p = 0; p < c.parts; ++p) parts.push_back({m * p / c.parts, m * (p + 1) / c.parts});
    const auto plan = cad.prepare({m, kQHeads, kKvHeads, kDim, kScale}, layout, parts);
    // As in the model, part p's Q, K, V exist only from forward(p) on and its dO only from
    // backward(p) on: NaN before, so a group that runs too early fails the comparison.
    std::vector<float> q(t.q.size(), kNaN), k(t.k.size(), kNaN), v(t.v.size(), kNaN), dout(t.dout.size(), kNaN);
    const auto reveal = [](std::vector<float>& dst, const std::vector<float>& src, RowRange rows, int64_t width) {
      std::copy(src.begin() + rows.begin * width, src.begin() + rows.end * width, dst.begin() + rows.begin * width);
    };
    const AttentionIO io{q.data(), k.data(), v.data(), t.o.data(), t.lse.data()};
    std::vector<std::unique_ptr<kernels::AttentionHandle>> fwd;
    for (size_t p = 0; p < parts.size(); ++p) {
      reveal(q, t.q, parts[p], qd);
      reveal(k, t.k, parts[p], kvd);
      reveal(v, t.v, parts[p], kvd);
      fwd.push_back(cad.forward(layer, *plan, p, io));
    }
    for (auto& h : fwd) h->wait();
    std::vector<std::unique_ptr<kernels::AttentionHandle>> bwd;
    for (size_t p = parts.size(); p-- > 0;) {
      reveal(dout, t.dout, parts[p], qd);
      bwd.push_back(cad.backward(layer, *plan, p, *fwd[p], io, {dout.data(), t.dq.data(), t.dk.data(), t.dv.data()}));
    }
    for (auto& h : bwd) h->wait();
    const attention_servers::CadPlanBytes plan_bytes = attention_servers::plan_bytes(*cad.last_plan());
    double plan_cost = 0;
    for (const auto& grp : cad.last_plan()->groups) {
      for (const auto& sp : grp.plan.server_plans()) plan_cost += sp.load();
    }
    const uint64_t forward_sent = cad.stats().forward_bytes_sent;
    const attention_servers::CadStepMetrics metrics = cad.end_step();  // servers included
    cad.shutdown_servers();

    test::expect_close(t.o, rows_double(g.o, r0, r1, qd), 1e-5, what + "O");
    test::expect_close(t.lse, rows_double(g.lse, r0, r1, kQHeads), 1e-5, what + "LSE");
    test::expect_close(t.dq, rows_double(g.dq, r0, r1, qd), 1e-5, what + "dQ", 1e-2);
    test::expect_close(t.dk, rows_double(g.dk, r0, r1, kvd), 1e-5, what + "dK", 1e-2);
    test::expect_close(t.dv, rows_double(g.dv, r0, r1, kvd), 1e-5, what + "dV", 1e-2);
    EXPECT_EQ(cad.traffic(layer).forward_bytes, forward_sent) << what;

    // Same plan on every rank, servers included.
    ASSERT_EQ(metrics.ranks.size(), static_cast<size_t>(W));
    for (int j = 0; j < W; ++j) EXPECT_EQ(metrics.ranks[static_cast<size_t>(j)].plan_hash, metrics.ranks[0].plan_hash) << what << "plan of rank " << j;
    EXPECT_NE(metrics.ranks[0].plan_hash, 0u);
    // Bytes the code sent, summed over ranks = the plan's count, exactly.
    uint64_t fwd_bytes = 0, bwd_bytes = 0;
    double cost = 0;
    for (const auto& st : metrics.ranks) {
      fwd_bytes += st.forward_bytes_sent;
      bwd_bytes += st.backward_bytes_sent;
      cost += st.task_cost;
      EXPECT_EQ(st.kept_bytes, 0u) << what << "KEEP_ON_SERVER state left after the backward";
    }
    EXPECT_EQ(fwd_bytes, static_cast<uint64_t>(plan_bytes.forward)) << what << "forward bytes";
    EXPECT_EQ(bwd_bytes, static_cast<uint64_t>(c.resend ? plan_bytes.backward_resend : plan_bytes.backward_keep))
        << what << "backward bytes";
    EXPECT_EQ(metrics.bytes_sent, fwd_bytes + bwd_bytes);
    EXPECT_NEAR(cost, plan_cost, 1e-9 * plan_cost) << what << "task cost served = the plan's";
    EXPECT_GE(metrics.cost_imbalance, 1.0);
    if (c.dedicated > 0 && W > 1) {
      EXPECT_GT(fwd_bytes, 0u) << what;
    }
    // Server memory: KEEP_ON_SERVER holds Q, K, V, O, LSE between forward and backward; RESEND nothing.
    if (c.resend) {
      EXPECT_EQ(metrics.kept_bytes_peak, 0u) << what;
    } else {
      EXPECT_GT(metrics.kept_bytes_peak, 0u) << what;
    }
    if (me == 0 && std::getenv("CADTRAIN_TEST_VERBOSE") != nullptr) {
      std::printf("  %s%s, server memory peak %llu B\n", what.c_str(), attention_servers::cad_step_line(metrics).c_str(),
                  static_cast<unsigned long long>(metrics.kept_bytes_peak));
    }
  }
}

// 150 rows: longer than a rank's share at every P here; 1, 2, 3: tinier than a shard.
const std::vector<int32_t> kMix = {150, 40, 1, 3, 2, 77};

TEST(CadAttention, InPlaceMatchesOneProcess) {
  for (const int parts : {1, 2}) {
    for (const bool resend : {false, true}) check_case({kMix, parts, resend, 0, false});
  }
}

TEST(CadAttention, InPlaceWithAnEmptyRank) {
  check_case({kMix, 2, false, 0, true});
  check_case({{1, 2, 1}, 1, true, 0, false});  // fewer rows than ranks at P = 4
}

TEST(CadAttention, DedicatedServersMatchOneProcess) {
  for (const int parts : {1, 2}) {
    for (const bool resend : {false, true}) check_case({kMix, parts, resend, 1, false});
  }
  if (world().size() >= 4) check_case({kMix, 2, false, 2, true});
}

}  // namespace
}  // namespace cadtrain
