// The CPU reference core attention against a naive double-precision attention written here,
// its backward against the double backward and finite differences, on packed sequences of
// different lengths (1 and 0 included, one longer than the kernel's 128-row block), GQA 4:1 and
// 1:1, head dims 16 and 64. Tolerances: O and LSE 1e-5, dQ/dK/dV 1e-4 (relative, per element,
// against max(|ref|, rms(ref))); finite differences eps 1e-2, relative L2 error 2e-3.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/error.h"
#include "kernel_test_util.h"
#include "kernels/core_attention.h"

using namespace cadtrain;
using namespace cadtrain::kernels;
using cadtrain::test::dot;
using cadtrain::test::expect_close;
using cadtrain::test::randn;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Inputs {
  AttentionShape shape;
  std::vector<int32_t> cu;
  std::vector<float> q, k, v, dout;
  SequenceLayout layout() const { return {cu.data(), static_cast<int64_t>(cu.size()) - 1}; }
};

Inputs make_inputs(const std::vector<int32_t>& lengths, int64_t q_heads, int64_t kv_heads, int64_t d, uint64_t seed) {
  Inputs in;
  in.cu = {0};
  for (int32_t len : lengths) in.cu.push_back(in.cu.back() + len);
  const int64_t n = in.cu.back();
  in.shape = {n, q_heads, kv_heads, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
  in.q = randn(n * q_heads * d, seed);
  in.k = randn(n * kv_heads * d, seed + 1);
  in.v = randn(n * kv_heads * d, seed + 2);
  in.dout = randn(n * q_heads * d, seed + 3);
  return in;
}

struct Result {
  std::vector<double> o, lse, dq, dk, dv;
};

// Row by row, in double: p_j = exp(scale q_t.k_j - lse_t) over keys j <= t of the same sequence;
// o_t = sum_j p_j v_j; dP_j = dO_t.v_j; dS_j = p_j (dP_j - sum_i p_i dP_i);
// dq_t = scale sum_j dS_j k_j; dk_j += scale dS_j q_t; dv_j += p_j dO_t.
Result reference(const Inputs& in) {
  const auto& s = in.shape;
  const int64_t n = s.n, hq = s.q_heads, hk = s.kv_heads, d = s.head_dim, group = hq / hk;
  Result r{std::vector<double>(n * hq * d, 0.0), std::vector<double>(n * hq, 0.0),
           std::vector<double>(n * hq * d, 0.0), std::vector<double>(n * hk * d, 0.0),
           std::vector<double>(n * hk * d, 0.0)};
  std::vector<double> p, dp;
  for (size_t seq = 0; seq + 1 < in.cu.size(); ++seq) {
    const int64_t t0 = in.cu[seq], t1 = in.cu[seq + 1];
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / group;
      for (int64_t t = t0; t < t1; ++t) {
        const float* qt = &in.q[(t * hq + h) * d];
        const int64_t keys = t - t0 + 1;
        p.assign(keys, 0.0);
        dp.assign(keys, 0.0);
        double m = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
          const float* kj = &in.k[((t0 + j) * hk + g) * d];
          double sc = 0;
          for (int64_t e = 0; e < d; ++e) sc += static_cast<double>(qt[e]) * kj[e];
          p[j] = sc * s.softmax_scale;
          m = std::max(m, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < keys; ++j) sum += std::exp(p[j] - m);
        const double lse = m + std::log(sum);
        r.lse[t * hq + h] = lse;
        double di = 0;
        for (int64_t j = 0; j < keys; ++j) {
          p[j] = std::exp(p[j] - lse);
          const float* vj = &in.v[((t0 + j) * hk + g) * d];
          for (int64_t e = 0; e < d; ++e) {
            r.o[(t * hq + h) * d + e] += p[j] * vj[e];
            dp[j] += static_cast<double>(in.dout[(t * hq + h) * d + e]) * vj[e];
          }
          di += p[j] * dp[j];
        }
        for (int64_t j = 0; j < keys; ++j) {
          const double ds = p[j] * (dp[j] - di);
          const int64_t kv = ((t0 + j) * hk + g) * d;
          for (int64_t e = 0; e < d; ++e) {
            r.dq[(t * hq + h) * d + e] += s.softmax_scale * ds * in.k[kv + e];
            r.dk[kv + e] += s.softmax_scale * ds * qt[e];
            r.dv[kv + e] += p[j] * in.dout[(t * hq + h) * d + e];
          }
        }
      }
    }
  }
  return r;
}

struct AttnOut {
  std::vector<float> o, lse, dq, dk, dv;
};

// Forward and backward; every output starts as NaN, since all of them must be overwritten.
AttnOut run(CoreAttention& attn, const Inputs& in) {
  const auto& s = in.shape;
  AttnOut r;
  r.o.assign(s.n * s.q_heads * s.head_dim, kNaN);
  r.lse.assign(s.n * s.q_heads, kNaN);
  r.dq.assign(r.o.size(), kNaN);
  r.dk.assign(s.n * s.kv_heads * s.head_dim, kNaN);
  r.dv.assign(r.dk.size(), kNaN);
  attention_forward_all(attn, r.o.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), s, in.layout());
  attention_backward_all(attn, r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), in.q.data(), in.k.data(), in.v.data(),
                r.o.data(), r.lse.data(), s, in.layout());
  return r;
}

struct Case {
  std::vector<int32_t> lengths;
  int64_t q_heads, kv_heads, d;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {{37, 1, 0, 64, 5}, 8, 2, 16},  // GQA 4:1
      {{37, 1, 0, 64, 5}, 2, 2, 64},  // 1:1
      {{150, 1, 9}, 4, 1, 16},        // 150 rows: two row blocks
      {{1}, 4, 1, 64},
  };
  return all;
}

}  // namespace

TEST(AttentionReference, MatchesDoubleForwardAndBackward) {
  auto attn = make_local_reference_attention();
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(fmt::format("heads {}:{} d {} tokens {}", c.q_heads, c.kv_heads, c.d, c.lengths.size()));
    const Inputs in = make_inputs(c.lengths, c.q_heads, c.kv_heads, c.d, seed += 10);
    const AttnOut got = run(*attn, in);
    const Result ref = reference(in);
    expect_close(got.o, ref.o, 1e-5, "O");
    expect_close(got.lse, ref.lse, 1e-5, "LSE");
    // With one key, dQ and dK are exactly 0 (P = 1, dS = dP - D = 0): the floor of 1e-2 admits
    // the ~1e-7 float residue there.
    expect_close(got.dq, ref.dq, 1e-4, "dQ", 1e-2);
    expect_close(got.dk, ref.dk, 1e-4, "dK", 1e-2);
    expect_close(got.dv, ref.dv, 1e-4, "dV", 1e-2);
    // Tasks run in any order on any thread; the results do not depend on it.
    const AttnOut again = run(*attn, in);
    EXPECT_EQ(got.o, again.o);
    EXPECT_EQ(got.dk, again.dk);
  }
}

TEST(AttentionReference, FiniteDifferences) {
  auto attn = make_local_reference_attention();
  for (const Case& c : {Case{{13, 1, 6}, 4, 1, 16}, Case{{9, 4}, 2, 2, 64}}) {
    SCOPED_TRACE(fmt::format("heads {}:{} d {}", c.q_heads, c.kv_heads, c.d));
    Inputs in = make_inputs(c.lengths, c.q_heads, c.kv_heads, c.d, 7);
    const AttnOut got = run(*attn, in);
    // L = sum(dout * O): its gradients are the backward's outputs for dO = dout.
    auto loss = [&] {
      std::vector<float> o(in.q.size()), lse(in.shape.n * in.shape.q_heads);
      attention_forward_all(*attn, o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), in.shape, in.layout());
      return dot(in.dout, o);
    };
    test::expect_fd_grad(in.q, got.dq, loss, 1e-2f, 2e-3, "dL/dQ");
    test::expect_fd_grad(in.k, got.dk, loss, 1e-2f, 2e-3, "dL/dK");
    test::expect_fd_grad(in.v, got.dv, loss, 1e-2f, 2e-3, "dL/dV");
  }
}

TEST(AttentionReference, LargeLogitsStayFinite) {
  auto attn = make_local_reference_attention();
  Inputs in = make_inputs({40, 1, 23}, 4, 2, 32, 300);
  for (auto& x : in.q) x *= 100.0f;  // scores ~ N(0, 100^2)
  const AttnOut got = run(*attn, in);
  for (const auto* v : {&got.o, &got.lse, &got.dq, &got.dk, &got.dv}) EXPECT_TRUE(test::all_finite(*v));
  const Result ref = reference(in);
  // Near one-hot rows: float rounding of the scores (~1e-5 absolute at this size) moves P a little.
  expect_close(got.o, ref.o, 1e-3, "O");
  expect_close(got.lse, ref.lse, 1e-5, "LSE");
}

TEST(AttentionReference, EmptyBatchAndBadShapes) {
  auto attn = make_local_reference_attention();
  Inputs empty = make_inputs({0, 0}, 2, 1, 16, 1);
  attention_forward_all(*attn, nullptr, nullptr, nullptr, nullptr, nullptr, empty.shape, empty.layout());
  Inputs in = make_inputs({3, 2}, 4, 2, 16, 2);
  std::vector<float> o(in.q.size()), lse(in.shape.n * in.shape.q_heads);
  AttentionShape bad = in.shape;
  bad.kv_heads = 3;
  EXPECT_THROW(attention_forward_all(*attn, o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), bad, in.layout()), Error);
  bad = in.shape;
  bad.n = 6;  // the sequences cover 5 tokens
  EXPECT_THROW(attention_forward_all(*attn, o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), bad, in.layout()), Error);
  bad = in.shape;
  bad.softmax_scale = 0;
  EXPECT_THROW(attention_forward_all(*attn, o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), bad, in.layout()), Error);
}
