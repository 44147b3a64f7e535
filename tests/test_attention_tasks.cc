// The fused CPU task attention (kernels/attention_tasks.h) against a naive double-precision
// attention over the same tasks written here: varlen mixes with 1-row tasks and lengths that are
// not multiples of the tiles, one 2000-row task beside tiny ones, GQA 8:1, 2:1 and 1:1, head dims
// 16, 40, 64 and 128, query shards in the middle of a document, non-causal tasks, rows that see no
// key, tasks sharing key rows (dK, dV sum) and split-key tasks merged with merge_attention_partials.
// Tolerances (relative, per element, against max(|ref|, rms(ref)), see kernel_test_util.h):
// O 2e-5, LSE 1e-5, dQ/dK/dV 1e-4 (floor 1e-2); merged partials against the whole task 1e-5;
// finite differences eps 1e-2, relative L2 error 2e-3.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "common/rng.h"
#include "kernel_test_util.h"
#include "kernels/attention_tasks.h"
#include "kernels/core_attention.h"

using namespace cadtrain;
using namespace cadtrain::kernels;
using cadtrain::test::dot;
using cadtrain::test::expect_close;
using cadtrain::test::randn;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Problem {
  AttentionDims dims;
  int64_t rows_q = 0, rows_kv = 0;
  std::vector<AttentionTask> tasks;
  std::vector<float> q, k, v, dout;
};

Problem make_problem(std::vector<AttentionTask> tasks, int64_t hq, int64_t hk, int64_t d, uint64_t seed) {
  Problem p;
  p.tasks = std::move(tasks);
  for (const auto& t : p.tasks) {
    p.rows_q = std::max(p.rows_q, t.q1);
    p.rows_kv = std::max(p.rows_kv, t.k1);
  }
  p.dims = {hq, hk, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
  p.q = randn(p.rows_q * hq * d, seed);
  p.k = randn(p.rows_kv * hk * d, seed + 1);
  p.v = randn(p.rows_kv * hk * d, seed + 2);
  p.dout = randn(p.rows_q * hq * d, seed + 3);
  return p;
}

// Packed documents, one causal task each (q and k rows the same).
std::vector<AttentionTask> documents(const std::vector<int64_t>& lengths) {
  std::vector<AttentionTask> tasks;
  int64_t r = 0;
  for (int64_t len : lengths) {
    tasks.push_back({r, r + len, r, r + len, 0, 0, true});
    r += len;
  }
  return tasks;
}

struct Result {
  std::vector<double> o, lse, dq, dk, dv;
};

// Task by task, row by row, in double. Key j (local) is visible to query row r (local) iff the
// task is non-causal or k_pos0 + j <= q_pos0 + r. p_j = exp(scale q.k_j - lse); o = sum p_j v_j;
// dS_j = p_j (dO.v_j - sum_i p_i dO.v_i); dq += scale sum dS_j k_j; dk_j += scale dS_j q;
// dv_j += p_j dO. Rows that see no key: o = 0, lse = -inf, no gradient.
Result reference(const Problem& pb) {
  const auto& dm = pb.dims;
  const int64_t hq = dm.q_heads, hk = dm.kv_heads, d = dm.head_dim, group = hq / hk;
  Result r{std::vector<double>(pb.rows_q * hq * d, 0.0), std::vector<double>(pb.rows_q * hq, 0.0),
           std::vector<double>(pb.rows_q * hq * d, 0.0), std::vector<double>(pb.rows_kv * hk * d, 0.0),
           std::vector<double>(pb.rows_kv * hk * d, 0.0)};
  std::vector<double> p, dp;
  for (const AttentionTask& t : pb.tasks) {
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / group;
      for (int64_t row = t.q0; row < t.q1; ++row) {
        const float* qt = &pb.q[(row * hq + h) * d];
        const float* dot_ = &pb.dout[(row * hq + h) * d];
        std::vector<int64_t> keys;
        for (int64_t j = t.k0; j < t.k1; ++j) {
          if (!t.causal || t.k_pos0 + (j - t.k0) <= t.q_pos0 + (row - t.q0)) keys.push_back(j);
        }
        if (keys.empty()) {
          r.lse[row * hq + h] = -INFINITY;
          continue;
        }
        p.assign(keys.size(), 0.0);
        dp.assign(keys.size(), 0.0);
        double m = -INFINITY;
        for (size_t x = 0; x < keys.size(); ++x) {
          const float* kj = &pb.k[(keys[x] * hk + g) * d];
          double sc = 0;
          for (int64_t e = 0; e < d; ++e) sc += static_cast<double>(qt[e]) * kj[e];
          p[x] = sc * dm.softmax_scale;
          m = std::max(m, p[x]);
        }
        double sum = 0;
        for (double s : p) sum += std::exp(s - m);
        const double lse = m + std::log(sum);
        r.lse[row * hq + h] = lse;
        double di = 0;
        for (size_t x = 0; x < keys.size(); ++x) {
          p[x] = std::exp(p[x] - lse);
          const float* vj = &pb.v[(keys[x] * hk + g) * d];
          for (int64_t e = 0; e < d; ++e) {
            r.o[(row * hq + h) * d + e] += p[x] * vj[e];
            dp[x] += static_cast<double>(dot_[e]) * vj[e];
          }
          di += p[x] * dp[x];
        }
        for (size_t x = 0; x < keys.size(); ++x) {
          const double ds = p[x] * (dp[x] - di);
          const int64_t kv = (keys[x] * hk + g) * d;
          for (int64_t e = 0; e < d; ++e) {
            r.dq[(row * hq + h) * d + e] += dm.softmax_scale * ds * pb.k[kv + e];
            r.dk[kv + e] += dm.softmax_scale * ds * qt[e];
            r.dv[kv + e] += p[x] * dot_[e];
          }
        }
      }
    }
  }
  return r;
}

struct Out {
  std::vector<float> o, lse, dq, dk, dv;
};

// Forward then backward. O, LSE and dQ start as NaN (task rows must be overwritten), dK and dV as
// zero (accumulated).
Out run(const Problem& pb) {
  const auto& dm = pb.dims;
  Out r;
  r.o.assign(pb.rows_q * dm.q_heads * dm.head_dim, kNaN);
  r.lse.assign(pb.rows_q * dm.q_heads, kNaN);
  r.dq.assign(r.o.size(), kNaN);
  r.dk.assign(pb.rows_kv * dm.kv_heads * dm.head_dim, 0.0f);
  r.dv.assign(r.dk.size(), 0.0f);
  attention_forward_tasks(r.o.data(), r.lse.data(), pb.q.data(), pb.k.data(), pb.v.data(), pb.tasks, dm);
  attention_backward_tasks(r.dq.data(), r.dk.data(), r.dv.data(), pb.dout.data(), pb.q.data(), pb.k.data(),
                           pb.v.data(), r.o.data(), r.lse.data(), pb.tasks, dm);
  return r;
}

// LSE -inf (no key) must match exactly; those entries are then set to 0 on both sides.
void match_infinities(std::vector<float>& got, std::vector<double>& ref) {
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isinf(ref[i])) {
      EXPECT_EQ(got[i], static_cast<float>(ref[i])) << "LSE element " << i;
      got[i] = 0;
      ref[i] = 0;
    }
  }
}

void expect_matches_reference_once(const Problem& pb, Result ref, const std::string& what) {
  SCOPED_TRACE(what);
  Out got = run(pb);
  match_infinities(got.lse, ref.lse);
  expect_close(got.o, ref.o, 2e-5, "O");
  expect_close(got.lse, ref.lse, 1e-5, "LSE");
  // With one visible key dQ and dK are exactly 0 (dS = dP - D_i = 0): the floor admits the float
  // residue of that cancellation, dP summed in float against D_i in double (up to 1.0e-6 seen in
  // the sanitizer build, which has no FMA; the floor x rtol admits 3e-6).
  expect_close(got.dq, ref.dq, 1e-4, "dQ", 3e-2);
  expect_close(got.dk, ref.dk, 1e-4, "dK", 3e-2);
  expect_close(got.dv, ref.dv, 1e-4, "dV", 1e-2);
  // Work runs in any order on any thread; results do not depend on it.
  const Out again = run(pb);
  EXPECT_EQ(got.dk, again.dk);
  EXPECT_EQ(got.dq, again.dq);
}

// Runs fn once with each backward strategy forced (CADTRAIN_ATTENTION_BWD), then restores auto.
template <typename Fn>
void for_each_backward_mode(Fn&& fn) {
  for (const char* mode : {"single", "two_pass"}) {
    SCOPED_TRACE(fmt::format("backward {}", mode));
    ::setenv("CADTRAIN_ATTENTION_BWD", mode, 1);
    fn();
  }
  ::unsetenv("CADTRAIN_ATTENTION_BWD");
}

void expect_matches_reference(const Problem& pb, const std::string& what) {
  const Result ref = reference(pb);
  for_each_backward_mode([&] { expect_matches_reference_once(pb, ref, what); });
}

}  // namespace

TEST(AttentionTasks, TaskPairs) {
  // Ending on the diagonal: q*k - q(q-1)/2 (DESIGN section 3).
  EXPECT_EQ(task_pairs({0, 100, 0, 100, 0, 0, true}), 100u * 101u / 2u);
  EXPECT_EQ(task_pairs({0, 30, 0, 100, 70, 0, true}), 30u * 100u - 30u * 29u / 2u);
  EXPECT_EQ(task_pairs({0, 30, 0, 100, 70, 0, false}), 3000u);
  EXPECT_EQ(task_pairs({0, 0, 0, 100, 0, 0, true}), 0u);
  EXPECT_EQ(task_pairs({0, 10, 0, 0, 0, 0, true}), 0u);
  // Against brute force on random geometry (keys before, after and across the queries).
  Rng rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    AttentionTask t;
    t.q1 = static_cast<int64_t>(rng.below(40));
    t.k1 = static_cast<int64_t>(rng.below(40));
    t.q_pos0 = static_cast<int64_t>(rng.below(60));
    t.k_pos0 = static_cast<int64_t>(rng.below(60));
    t.causal = rng.below(4) != 0;
    uint64_t brute = 0;
    for (int64_t r = 0; r < t.q1; ++r) {
      for (int64_t j = 0; j < t.k1; ++j) brute += (!t.causal || t.k_pos0 + j <= t.q_pos0 + r) ? 1 : 0;
    }
    EXPECT_EQ(task_pairs(t), brute) << "q " << t.q1 << " k " << t.k1 << " pos " << t.q_pos0 << "/" << t.k_pos0;
  }
}

TEST(AttentionTasks, VarlenDocumentsMatchDouble) {
  const std::vector<int64_t> lengths = {1, 37, 64, 65, 1, 130, 3, 200, 1};
  expect_matches_reference(make_problem(documents(lengths), 8, 1, 64, 10), "GQA 8:1 d 64");
  expect_matches_reference(make_problem(documents(lengths), 2, 2, 128, 20), "1:1 d 128");
  expect_matches_reference(make_problem(documents({1, 77, 5, 129}), 4, 2, 40, 30), "GQA 2:1 d 40");
  expect_matches_reference(make_problem(documents({1}), 4, 1, 64, 40), "one 1-row task");
}

TEST(AttentionTasks, HugeTaskBesideTinyOnes) {
  std::vector<int64_t> lengths = {2000};
  for (int i = 0; i < 40; ++i) lengths.push_back(1 + i % 7);
  expect_matches_reference(make_problem(documents(lengths), 2, 1, 16, 50), "2000 + 40 tiny, GQA 2:1 d 16");
}

TEST(AttentionTasks, ShardsNonCausalAndSharedKeys) {
  // Q rows and K rows are separate tensors. A: a query shard [100, 230) of a document whose keys
  // are its prefix [0, 230). B: the first shard [0, 100) of the same document, sharing key rows
  // 0..99 with A (dK, dV sum). C: non-causal, 9 queries over 50 keys overlapping A's keys.
  // D: keys start after the queries' positions for its first rows (those rows see no key).
  // E: no keys at all. F: a 1-row shard at position 300 over keys at 0..40 of another document.
  std::vector<AttentionTask> tasks = {
      {0, 130, 0, 230, 100, 0, true},     // A
      {130, 230, 0, 100, 0, 0, true},     // B
      {230, 239, 180, 230, 0, 0, false},  // C
      {239, 254, 230, 250, 0, 10, true},  // D: rows 0..9 see nothing
      {254, 260, 250, 250, 0, 0, true},   // E
      {260, 261, 250, 291, 300, 0, true},  // F
  };
  expect_matches_reference(make_problem(tasks, 8, 1, 64, 60), "GQA 8:1 d 64");
  expect_matches_reference(make_problem(tasks, 3, 3, 128, 70), "1:1 d 128");
}

TEST(AttentionTasks, UncoveredRowsUntouched) {
  // Query rows 5..9 and key rows 3..6 belong to no task.
  Problem pb = make_problem({{0, 5, 0, 3, 0, 0, true}, {10, 20, 7, 17, 0, 0, true}}, 2, 1, 16, 80);
  const Out got = run(pb);
  const int64_t hq = 2, d = 16;
  for (int64_t r = 5; r < 10; ++r) {
    for (int64_t h = 0; h < hq; ++h) {
      EXPECT_TRUE(std::isnan(got.lse[r * hq + h]));
      for (int64_t e = 0; e < d; ++e) {
        EXPECT_TRUE(std::isnan(got.o[(r * hq + h) * d + e]));
        EXPECT_TRUE(std::isnan(got.dq[(r * hq + h) * d + e]));
      }
    }
  }
  for (int64_t j = 3 * d; j < 7 * d; ++j) EXPECT_EQ(got.dk[j], 0.0f);
}

TEST(AttentionTasks, MergedSplitKeysEqualWhole) {
  // Rows [0, 150) of one document: keys split at 70 into two tasks. Rows < 70 see no key of the
  // second part (LSE -inf there), so merging must leave them exact.
  for (const auto& [hq, hk, d] : {std::tuple{4, 2, 64}, std::tuple{8, 1, 128}}) {
    SCOPED_TRACE(fmt::format("heads {}:{} d {}", hq, hk, d));
    const AttentionTask whole{0, 150, 0, 150, 0, 0, true};
    const AttentionTask lo{0, 150, 0, 70, 0, 0, true}, hi{0, 150, 70, 150, 0, 70, true};
    const Problem pb = make_problem({whole}, hq, hk, d, 90);
    const Out ref = run(pb);
    std::vector<float> oa(ref.o.size()), la(ref.lse.size()), ob(ref.o.size()), lb(ref.lse.size());
    attention_forward_tasks(oa.data(), la.data(), pb.q.data(), pb.k.data(), pb.v.data(), {&lo, 1}, pb.dims);
    attention_forward_tasks(ob.data(), lb.data(), pb.q.data(), pb.k.data(), pb.v.data(), {&hi, 1}, pb.dims);
    EXPECT_EQ(lb[0], -INFINITY);
    merge_attention_partials(oa.data(), la.data(), ob.data(), lb.data(), 150, hq, d);
    expect_close(oa, test::to_double(ref.o), 1e-5, "merged O");
    expect_close(la, test::to_double(ref.lse), 1e-5, "merged LSE");
    // Backward of the two split tasks in one call (they share query rows: dQ sums), given the
    // merged O and LSE, equals the whole task's backward.
    const std::vector<AttentionTask> split = {lo, hi};
    for_each_backward_mode([&] {
      std::vector<float> dq(ref.dq.size(), kNaN), dk(ref.dk.size(), 0.0f), dv(ref.dv.size(), 0.0f);
      attention_backward_tasks(dq.data(), dk.data(), dv.data(), pb.dout.data(), pb.q.data(), pb.k.data(),
                               pb.v.data(), oa.data(), la.data(), split, pb.dims);
      expect_close(dq, test::to_double(ref.dq), 1e-4, "split dQ", 1e-2);
      expect_close(dk, test::to_double(ref.dk), 1e-4, "split dK", 1e-2);
      expect_close(dv, test::to_double(ref.dv), 1e-4, "split dV", 1e-2);
    });
  }
  // Both sides empty stay empty; an empty a takes b.
  std::vector<float> oa = {kNaN, kNaN}, la = {-INFINITY}, ob = {1.0f, 2.0f}, lb = {-INFINITY};
  merge_attention_partials(oa.data(), la.data(), ob.data(), lb.data(), 1, 1, 2);
  EXPECT_EQ(la[0], -INFINITY);
  lb[0] = 0.5f;
  merge_attention_partials(oa.data(), la.data(), ob.data(), lb.data(), 1, 1, 2);
  EXPECT_EQ(la[0], 0.5f);
  EXPECT_EQ(oa[0], 1.0f);
  EXPECT_EQ(oa[1], 2.0f);
  // Two equal halves: lse + log 2, same O.
  std::vector<float> oc = {3.0f, -1.0f}, lc = {1.0f}, od = {3.0f, -1.0f}, ld = {1.0f};
  merge_attention_partials(oc.data(), lc.data(), od.data(), ld.data(), 1, 1, 2);
  EXPECT_NEAR(lc[0], 1.0 + std::log(2.0), 1e-6);
  EXPECT_NEAR(oc[0], 3.0f, 1e-6);
  EXPECT_NEAR(oc[1], -1.0f, 1e-6);
}

TEST(AttentionTasks, FiniteDifferences) {
  const std::vector<AttentionTask> tasks = {
      {0, 13, 0, 13, 0, 0, true}, {13, 18, 0, 13, 8, 0, true}, {18, 24, 13, 20, 0, 0, false}};
  Problem pb = make_problem(tasks, 4, 1, 16, 7);
  const Out got = run(pb);
  // L = sum(dout * O): its gradients are the backward's outputs for dO = dout.
  auto loss = [&] {
    std::vector<float> o(pb.q.size()), lse(pb.rows_q * pb.dims.q_heads);
    attention_forward_tasks(o.data(), lse.data(), pb.q.data(), pb.k.data(), pb.v.data(), pb.tasks, pb.dims);
    return dot(pb.dout, o);
  };
  test::expect_fd_grad(pb.q, got.dq, loss, 1e-2f, 2e-3, "dL/dQ");
  test::expect_fd_grad(pb.k, got.dk, loss, 1e-2f, 2e-3, "dL/dK");
  test::expect_fd_grad(pb.v, got.dv, loss, 1e-2f, 2e-3, "dL/dV");
}

TEST(AttentionTasks, LargeLogitsStayFinite) {
  Problem pb = make_problem(documents({40, 1, 150}), 4, 2, 32, 300);
  for (auto& x : pb.q) x *= 100.0f;  // scores ~ N(0, 100^2)
  const Out got = run(pb);
  for (const auto* v : {&got.o, &got.lse, &got.dq, &got.dk, &got.dv}) EXPECT_TRUE(test::all_finite(*v));
  const Result ref = reference(pb);
  // Near one-hot rows: float rounding of the scores (~1e-5 absolute at this size) moves P a little.
  expect_close(got.o, ref.o, 1e-3, "O");
  expect_close(got.lse, ref.lse, 1e-5, "LSE");
}

TEST(AttentionTasks, BadArguments) {
  Problem pb = make_problem(documents({8}), 4, 2, 16, 1);
  std::vector<float> o(pb.q.size()), lse(8 * 4);
  auto fwd = [&](std::vector<AttentionTask> tasks, AttentionDims dims) {
    attention_forward_tasks(o.data(), lse.data(), pb.q.data(), pb.k.data(), pb.v.data(), tasks, dims);
  };
  EXPECT_THROW(fwd({{0, 8, 0, 8}, {4, 6, 0, 8}}, pb.dims), Error);  // shared query rows
  EXPECT_THROW(fwd({{0, 8, 0, 8}}, {4, 3, 16, 0.25f}), Error);      // 4 q heads over 3 kv heads
  EXPECT_THROW(fwd({{0, 8, 0, 8}}, {4, 2, 16, 0.0f}), Error);       // scale 0
  EXPECT_THROW(fwd({{5, 3, 0, 8}}, pb.dims), Error);                // q1 < q0
  // No rows: nothing to do, null pointers allowed.
  attention_forward_tasks(nullptr, nullptr, nullptr, nullptr, nullptr, {}, pb.dims);
}

TEST(AttentionTasks, CoreAttentionMatchesReferenceKernel) {
  // make_local_task_attention against make_local_reference_attention on packed sequences.
  const std::vector<int32_t> cu = {0, 37, 38, 38, 202, 207};
  const int64_t n = cu.back(), hq = 8, hk = 2, d = 64;
  const AttentionShape shape{n, hq, hk, d, 0.125f};
  const SequenceLayout layout{cu.data(), static_cast<int64_t>(cu.size()) - 1};
  const auto q = randn(n * hq * d, 1), k = randn(n * hk * d, 2), v = randn(n * hk * d, 3), dout = randn(n * hq * d, 4);
  Out res[2];
  for (int idx = 0; idx < 2; ++idx) {
    const auto attn = idx == 0 ? make_local_reference_attention() : make_local_task_attention();
    Out& r = res[idx];
    r.o.assign(n * hq * d, kNaN);
    r.lse.assign(n * hq, kNaN);
    r.dq.assign(r.o.size(), kNaN);
    r.dk.assign(n * hk * d, kNaN);  // overwritten by CoreAttention::backward
    r.dv.assign(r.dk.size(), kNaN);
    attention_forward_all(*attn, r.o.data(), r.lse.data(), q.data(), k.data(), v.data(), shape, layout);
    attention_backward_all(*attn, r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(), r.o.data(),
                   r.lse.data(), shape, layout);
  }
  expect_close(res[1].o, test::to_double(res[0].o), 1e-5, "O");
  expect_close(res[1].lse, test::to_double(res[0].lse), 1e-5, "LSE");
  expect_close(res[1].dq, test::to_double(res[0].dq), 1e-4, "dQ", 1e-2);
  expect_close(res[1].dk, test::to_double(res[0].dk), 1e-4, "dK", 1e-2);
  expect_close(res[1].dv, test::to_double(res[0].dv), 1e-4, "dV", 1e-2);
}

TEST(AttentionTasks, SequenceTasksPlanPartsWithTruePositions) {
  // Sequences of 5, 0, 7, 4 rows; the third is the tail of a document (first position 10).
  const std::vector<int32_t> cu = {0, 5, 5, 12, 16};
  const std::vector<int32_t> first_pos = {0, 3, 10, 0};
  const std::vector<uint64_t> docs = {4, 9, 2, 7};
  const SequenceLayout layout{cu.data(), 4, first_pos.data(), docs.data()};
  const std::vector<AttentionTask> all = sequence_tasks(layout, {0, 16});
  ASSERT_EQ(all.size(), 3u);  // the empty sequence has no task
  EXPECT_EQ(all[1].q0, 5);
  EXPECT_EQ(all[1].k1, 12);
  EXPECT_EQ(all[1].q_pos0, 10);
  EXPECT_EQ(all[1].k_pos0, 10);
  // Rows [3, 9): the end of sequence 0 (keys from its start) and the start of sequence 2.
  const std::vector<AttentionTask> mid = sequence_tasks(layout, {3, 9});
  ASSERT_EQ(mid.size(), 2u);
  EXPECT_EQ(mid[0].q0, 3);
  EXPECT_EQ(mid[0].q1, 5);
  EXPECT_EQ(mid[0].k0, 0);
  EXPECT_EQ(mid[0].k1, 5);
  EXPECT_EQ(mid[0].q_pos0, 3);
  EXPECT_EQ(mid[0].k_pos0, 0);
  EXPECT_EQ(mid[1].q0, 5);
  EXPECT_EQ(mid[1].q1, 9);
  EXPECT_EQ(mid[1].k0, 5);
  EXPECT_EQ(mid[1].k1, 9);
  EXPECT_EQ(mid[1].q_pos0, 10);
  // Rows [9, 16): sequence 2 from row 9 (position 14) with keys from its start, then sequence 3.
  const std::vector<AttentionTask> last = sequence_tasks(layout, {9, 16});
  ASSERT_EQ(last.size(), 2u);
  EXPECT_EQ(last[0].q0, 9);
  EXPECT_EQ(last[0].k0, 5);
  EXPECT_EQ(last[0].k1, 12);
  EXPECT_EQ(last[0].q_pos0, 14);
  EXPECT_EQ(last[0].k_pos0, 10);
  // The pair count of the parts adds up to the whole, which is sum T(T+1)/2.
  uint64_t parts = 0;
  for (const auto* ts : {&mid, &last}) {
    for (const AttentionTask& t : *ts) parts += task_pairs(t);
  }
  for (const AttentionTask& t : sequence_tasks(layout, {0, 3})) parts += task_pairs(t);
  EXPECT_EQ(layout_pairs(layout), 15u + 28u + 10u);
  EXPECT_EQ(parts, layout_pairs(layout));
  // Malformed layouts and ranges are named.
  const std::vector<int32_t> bad_cu = {0, 5, 4};
  EXPECT_THROW(sequence_tasks({bad_cu.data(), 2}, {0, 4}), Error);
  EXPECT_THROW(sequence_tasks(layout, {3, 17}), Error);
  const std::vector<int32_t> bad_pos = {0, -1, 0, 0};
  EXPECT_THROW(sequence_tasks({cu.data(), 4, bad_pos.data()}, {0, 16}), Error);
}

// CoreAttention v2 on nano-batch parts that cut sequences: forward part by part, backward last
// part first with dK and dV zeroed once, equals the whole micro-batch in one part (both local
// strategies), and the fused kernel equals the reference on the parts.
TEST(AttentionTasks, CoreAttentionPartsMatchWholeMicroBatch) {
  const std::vector<int32_t> cu = {0, 37, 38, 38, 202, 207};
  const std::vector<int32_t> first_pos = {0, 5, 0, 100, 0};  // the fourth: a document's tail
  const int64_t n = cu.back(), hq = 4, hk = 2, d = 32;
  const AttentionShape shape{n, hq, hk, d, 0.17f};
  const SequenceLayout layout{cu.data(), 5, first_pos.data(), nullptr};
  const auto q = randn(n * hq * d, 11), k = randn(n * hk * d, 12), v = randn(n * hk * d, 13);
  const auto dout = randn(n * hq * d, 14);
  const std::vector<RowRange> whole = {{0, n}};
  const std::vector<RowRange> cut = {{0, 20}, {20, 120}, {120, 120}, {120, n}};
  Out res[2][2];  // [strategy][whole, cut]
  for (int si = 0; si < 2; ++si) {
    const auto attn = si == 0 ? make_local_reference_attention() : make_local_task_attention();
    for (int pi = 0; pi < 2; ++pi) {
      const std::vector<RowRange>& parts = pi == 0 ? whole : cut;
      Out& r = res[si][pi];
      r.o.assign(n * hq * d, kNaN);
      r.lse.assign(n * hq, kNaN);
      r.dq.assign(r.o.size(), kNaN);
      r.dk.assign(n * hk * d, 0.0f);
      r.dv.assign(r.dk.size(), 0.0f);
      const auto plan = attn->prepare(shape, layout, parts);
      std::vector<std::unique_ptr<AttentionHandle>> fwd;
      const AttentionIO io{q.data(), k.data(), v.data(), r.o.data(), r.lse.data()};
      for (size_t p = 0; p < parts.size(); ++p) fwd.push_back(attn->forward(3, *plan, p, io));
      for (auto& h : fwd) h->wait();
      for (size_t p = parts.size(); p-- > 0;) {
        attn->backward(3, *plan, p, *fwd[p], io, {dout.data(), r.dq.data(), r.dk.data(), r.dv.data()})->wait();
      }
    }
    const std::string name = si == 0 ? "reference " : "fused ";
    expect_close(res[si][1].o, test::to_double(res[si][0].o), 1e-5, name + "O");
    expect_close(res[si][1].lse, test::to_double(res[si][0].lse), 1e-5, name + "LSE");
    expect_close(res[si][1].dq, test::to_double(res[si][0].dq), 1e-5, name + "dQ", 1e-2);
    expect_close(res[si][1].dk, test::to_double(res[si][0].dk), 1e-5, name + "dK", 1e-2);
    expect_close(res[si][1].dv, test::to_double(res[si][0].dv), 1e-5, name + "dV", 1e-2);
  }
  expect_close(res[1][1].o, test::to_double(res[0][1].o), 1e-5, "fused vs reference O");
  expect_close(res[1][1].dk, test::to_double(res[0][1].dk), 1e-4, "fused vs reference dK", 1e-2);
  // Parts must be contiguous and cover the micro-batch.
  auto attn = make_local_task_attention();
  const std::vector<RowRange> gap = {{0, 20}, {30, n}};
  EXPECT_THROW(attn->prepare(shape, layout, gap), Error);
  const std::vector<RowRange> short_parts = {{0, 20}};
  EXPECT_THROW(attn->prepare(shape, layout, short_parts), Error);
}
