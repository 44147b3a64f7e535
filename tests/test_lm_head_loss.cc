// The fused LM head + cross-entropy against a plain double-precision reference that builds the
// whole [N, V] logits, and its gradients against finite differences of the summed loss.
// Tolerances as in test_kernels_cpu.cc: outputs 1e-5, gradients 1e-4 (relative, per element,
// against max(|ref|, rms(ref))), finite differences eps 1e-2 with relative L2 error 2e-3.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernel_test_util.h"
#include "kernels/cpu/cpu_backend.h"

using namespace cadtrain;
using namespace cadtrain::kernels;
using cadtrain::test::expect_close;
using cadtrain::test::randn;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Problem {
  int64_t n = 0, c = 0, v = 0;
  std::vector<float> h, w, mask;  // mask empty = nullptr (all 1)
  std::vector<uint32_t> targets;
  float grad_scale = 1.0f;
};

Problem make_problem(int64_t n, int64_t c, int64_t v, uint64_t seed, bool with_mask) {
  Problem p;
  p.n = n, p.c = c, p.v = v;
  p.h = randn(n * c, seed);
  p.w = randn(v * c, seed + 1, 1.0 / std::sqrt(static_cast<double>(c)));  // logits ~ N(0, 1)
  Rng rng(seed + 2);
  for (int64_t i = 0; i < n; ++i) p.targets.push_back(static_cast<uint32_t>(rng.below(v)));
  if (with_mask) {
    // A third ignored, some half-weighted, the rest 1.
    for (int64_t i = 0; i < n; ++i) p.mask.push_back(i % 3 == 1 ? 0.0f : (i % 7 == 0 ? 0.5f : 1.0f));
  }
  return p;
}

struct Outputs {
  LmHeadLossResult result;
  std::vector<float> dh, dw, row_loss;
  std::vector<uint32_t> argmax;
};

// Runs the op with every output requested; dh starts as NaN (it must be overwritten), dw as dw0.
Outputs run(Backend& be, const Problem& p, const std::vector<float>& dw0, bool grads = true) {
  Outputs out;
  out.dh.assign(p.n * p.c, kNaN);
  out.dw = dw0;
  out.row_loss.assign(p.n, kNaN);
  out.argmax.assign(p.n, 12345);
  LmHeadLossArgs a;
  a.h = p.h.data(), a.w = p.w.data(), a.targets = p.targets.data();
  a.mask = p.mask.empty() ? nullptr : p.mask.data();
  a.n = p.n, a.c = p.c, a.v = p.v;
  a.dh = grads ? out.dh.data() : nullptr;
  a.dw = grads ? out.dw.data() : nullptr;
  a.grad_scale = p.grad_scale;
  a.row_loss = out.row_loss.data();
  a.row_argmax = out.argmax.data();
  out.result = be.lm_head_cross_entropy(a);
  return out;
}

struct Reference {
  double loss_sum = 0, weight_sum = 0;
  std::vector<double> dh, dw, row_loss;
  std::vector<uint32_t> argmax;
};

// logits = h W^T in double, whole; loss_i = lse_i - z_i[t_i];
// dlogits = grad_scale * mask_i * (softmax(z_i) - onehot(t_i)); dh = dlogits W; dw = dw0 + dlogits^T h.
Reference reference(const Problem& p, const std::vector<float>& dw0) {
  Reference r;
  r.dh.assign(p.n * p.c, 0.0);
  r.dw.assign(dw0.begin(), dw0.end());
  r.row_loss.assign(p.n, 0.0);
  r.argmax.assign(p.n, 0);
  std::vector<double> z(p.v);
  for (int64_t i = 0; i < p.n; ++i) {
    const double mask = p.mask.empty() ? 1.0 : p.mask[i];
    for (int64_t j = 0; j < p.v; ++j) {
      double s = 0;
      for (int64_t k = 0; k < p.c; ++k) s += static_cast<double>(p.h[i * p.c + k]) * p.w[j * p.c + k];
      z[j] = s;
    }
    double m = z[0];
    for (int64_t j = 1; j < p.v; ++j) {
      if (z[j] > m) m = z[j], r.argmax[i] = static_cast<uint32_t>(j);
    }
    r.weight_sum += mask;
    if (mask == 0) continue;
    double sum = 0;
    for (int64_t j = 0; j < p.v; ++j) sum += std::exp(z[j] - m);
    const double lse = m + std::log(sum);
    r.row_loss[i] = lse - z[p.targets[i]];
    r.loss_sum += mask * r.row_loss[i];
    for (int64_t j = 0; j < p.v; ++j) {
      const double d = p.grad_scale * mask * (std::exp(z[j] - lse) - (j == p.targets[i] ? 1.0 : 0.0));
      for (int64_t k = 0; k < p.c; ++k) {
        r.dh[i * p.c + k] += d * p.w[j * p.c + k];
        r.dw[j * p.c + k] += d * p.h[i * p.c + k];
      }
    }
  }
  return r;
}

void expect_matches(const Outputs& o, const Reference& r, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_NEAR(o.result.loss_sum, r.loss_sum, 1e-5 * std::max(1.0, std::abs(r.loss_sum)));
  EXPECT_DOUBLE_EQ(o.result.weight_sum, r.weight_sum);
  expect_close(o.row_loss, r.row_loss, 1e-5, "row_loss");
  EXPECT_EQ(o.argmax, r.argmax);
  expect_close(o.dh, r.dh, 1e-4, "dh");
  expect_close(o.dw, r.dw, 1e-4, "dw");
}

}  // namespace

TEST(CpuLmHeadLoss, MasksAndBlocksMatchDouble) {
  // N = 300 is not a multiple of the 128-row block; V = 517 is odd (no SIMD-width multiple).
  cpu::CpuBackendOptions opts;
  opts.lm_head_block_rows = 128;
  cpu::CpuBackend be(opts);
  Problem p = make_problem(300, 40, 517, 1, /*with_mask=*/true);
  p.grad_scale = 0.25f;
  const auto dw0 = randn(p.v * p.c, 9);  // dw accumulates onto what it holds
  const Reference ref = reference(p, dw0);
  const Outputs out = run(be, p, dw0);
  expect_matches(out, ref, "128-row blocks");

  // Blocks capped by bytes (3 rows of logits), and the default backend: the same results.
  cpu::CpuBackendOptions tiny;
  tiny.lm_head_block_bytes = 3 * 517 * sizeof(float);
  cpu::CpuBackend be_tiny(tiny);
  expect_matches(run(be_tiny, p, dw0), ref, "3-row blocks");
  expect_matches(run(*make_cpu_backend(), p, dw0), ref, "default blocks");

  // Evaluation only: the same loss and per-row outputs, no gradients touched.
  const Outputs eval = run(be, p, dw0, /*grads=*/false);
  EXPECT_NEAR(eval.result.loss_sum, ref.loss_sum, 1e-5 * ref.loss_sum);
  expect_close(eval.row_loss, ref.row_loss, 1e-5, "eval row_loss");
  EXPECT_EQ(eval.argmax, ref.argmax);
}

TEST(CpuLmHeadLoss, LargeVocabularyNoMask) {
  Problem p = make_problem(9, 16, 50257, 2, /*with_mask=*/false);
  const std::vector<float> dw0(p.v * p.c, 0.0f);
  expect_matches(run(*make_cpu_backend(), p, dw0), reference(p, dw0), "V = 50257");
}

TEST(CpuLmHeadLoss, AllMaskedRowsContributeNothing) {
  cpu::CpuBackend be;
  Problem p = make_problem(20, 8, 33, 3, /*with_mask=*/true);
  std::fill(p.mask.begin(), p.mask.end(), 0.0f);
  p.targets[4] = 1u << 31;  // ignored rows may hold any padding id
  const auto dw0 = randn(p.v * p.c, 10);
  const Outputs out = run(be, p, dw0);
  const Reference ref = reference(p, dw0);
  EXPECT_EQ(out.result.loss_sum, 0.0);
  EXPECT_EQ(out.result.weight_sum, 0.0);
  for (float d : out.dh) ASSERT_EQ(d, 0.0f);
  EXPECT_EQ(out.dw, dw0);
  for (float l : out.row_loss) ASSERT_EQ(l, 0.0f);
  EXPECT_EQ(out.argmax, ref.argmax);  // the prediction is still reported
}

TEST(CpuLmHeadLoss, TargetOutsideVocabularyNamesRowAndId) {
  cpu::CpuBackend be;
  Problem p = make_problem(10, 8, 33, 4, /*with_mask=*/false);
  p.targets[7] = 33;
  const auto dw0 = randn(p.v * p.c, 11);
  auto dw = dw0;
  LmHeadLossArgs a;
  a.h = p.h.data(), a.w = p.w.data(), a.targets = p.targets.data();
  a.n = p.n, a.c = p.c, a.v = p.v;
  std::vector<float> dh(p.n * p.c);
  a.dh = dh.data(), a.dw = dw.data();
  try {
    be.lm_head_cross_entropy(a);
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("row 7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("33"), std::string::npos) << msg;
  }
  EXPECT_EQ(dw, dw0);  // nothing was written
}

TEST(CpuLmHeadLoss, FiniteDifferences) {
  cpu::CpuBackend be;
  Problem p = make_problem(6, 12, 67, 5, /*with_mask=*/true);
  const Outputs out = run(be, p, std::vector<float>(p.v * p.c, 0.0f));
  // L = sum of masked losses (grad_scale 1): dh and dw are exactly dL/dh and dL/dw.
  auto loss = [&] { return run(be, p, {}, /*grads=*/false).result.loss_sum; };
  test::expect_fd_grad(p.h, out.dh, loss, 1e-2f, 2e-3, "dL/dh");
  test::expect_fd_grad(p.w, out.dw, loss, 1e-2f, 2e-3, "dL/dw");
}

TEST(CpuLmHeadLoss, LargeLogitsStayFinite) {
  cpu::CpuBackend be;
  Problem p = make_problem(12, 16, 101, 6, /*with_mask=*/true);
  for (auto& x : p.h) x *= 100.0f;  // logits ~ N(0, 100^2): exp would overflow without the max shift
  const auto dw0 = std::vector<float>(p.v * p.c, 0.0f);
  const Outputs out = run(be, p, dw0);
  EXPECT_TRUE(std::isfinite(out.result.loss_sum));
  EXPECT_TRUE(test::all_finite(out.dh) && test::all_finite(out.dw) && test::all_finite(out.row_loss));
  const Reference ref = reference(p, dw0);
  EXPECT_NEAR(out.result.loss_sum, ref.loss_sum, 1e-5 * ref.loss_sum);
}
