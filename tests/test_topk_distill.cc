// The fused LM head with the tempered decoupled top-K distillation term (DESIGN section 7) against
// an unfused double-precision reference that builds whole logit rows and applies the formulas as
// written, with its gradients taken by central finite differences of the reference loss (so the
// kernel's analytic gradient is checked against differences, not against the same algebra).
// Tolerances as in test_lm_head_loss.cc: losses 1e-5 relative, gradients 1e-4 per element.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
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

struct Problem {
  int64_t n = 0, c = 0, v = 0, k = 0;
  std::vector<float> h, w, mask;
  std::vector<uint32_t> targets;
  std::vector<int32_t> ids;       // [n, k]
  std::vector<float> logprobs;    // [n, k]
  float lambda = 0.7f, tau = 1.0f, grad_scale = 1.0f;
  bool tau_squared = false;
};

// Teacher rows: logits ~ N(0, 2^2) over the vocabulary, log-softmax over all of it, and either its
// top-K ids (what `distill prepare` stores) or K random distinct ids.
void add_teacher(Problem& p, uint64_t seed, bool top_k) {
  Rng rng(seed);
  for (int64_t i = 0; i < p.n; ++i) {
    std::vector<double> t(p.v);
    for (auto& x : t) x = 2.0 * rng.normal();
    double mx = -INFINITY;
    for (double x : t) mx = std::max(mx, x);
    double s = 0;
    for (double x : t) s += std::exp(x - mx);
    const double lse = mx + std::log(s);
    std::vector<int32_t> order(p.v);
    std::iota(order.begin(), order.end(), 0);
    if (top_k) {
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return t[a] > t[b]; });
    } else {
      for (int64_t j = p.v - 1; j > 0; --j) std::swap(order[j], order[rng.below(j + 1)]);
    }
    for (int64_t j = 0; j < p.k; ++j) {
      p.ids.push_back(order[j]);
      p.logprobs.push_back(static_cast<float>(t[order[j]] - lse));
    }
  }
}

Problem make_problem(int64_t n, int64_t c, int64_t v, int64_t k, uint64_t seed, bool top_k = true) {
  Problem p;
  p.n = n, p.c = c, p.v = v, p.k = k;
  p.h = randn(n * c, seed);
  p.w = randn(v * c, seed + 1, 1.0 / std::sqrt(static_cast<double>(c)));
  Rng rng(seed + 2);
  for (int64_t i = 0; i < n; ++i) p.targets.push_back(static_cast<uint32_t>(rng.below(v)));
  for (int64_t i = 0; i < n; ++i) p.mask.push_back(i % 5 == 2 ? 0.0f : (i % 4 == 0 ? 0.5f : 1.0f));
  add_teacher(p, seed + 3, top_k);
  return p;
}

struct Outputs {
  LmHeadLossResult result;
  std::vector<float> dh, dw, row_kd, row_loss;
};

Outputs run(Backend& be, const Problem& p, const std::vector<float>& dw0, bool grads = true) {
  Outputs o;
  o.dh.assign(p.n * p.c, NAN);
  o.dw = dw0;
  o.row_kd.assign(p.n, NAN);
  o.row_loss.assign(p.n, NAN);
  TopKDistillArgs kd;
  kd.ids = p.ids.data(), kd.logprobs = p.logprobs.data(), kd.k = p.k;
  kd.weight = p.lambda, kd.temperature = p.tau, kd.tau_squared = p.tau_squared;
  kd.row_kd = o.row_kd.data();
  LmHeadLossArgs a;
  a.h = p.h.data(), a.w = p.w.data(), a.targets = p.targets.data(), a.mask = p.mask.data();
  a.n = p.n, a.c = p.c, a.v = p.v;
  a.dh = grads ? o.dh.data() : nullptr;
  a.dw = grads ? o.dw.data() : nullptr;
  a.grad_scale = p.grad_scale;
  a.row_loss = o.row_loss.data();
  a.distill = &kd;
  o.result = be.lm_head_cross_entropy(a);
  return o;
}

// ---- the unfused reference: whole rows in double, the formulas exactly as DESIGN writes them ----

struct RowLosses {
  double ce = 0, kd = 0;
};

RowLosses reference_row(const Problem& p, int64_t i, const std::vector<double>& z) {
  double mx = -INFINITY;
    for (double x : z) mx = std::max(mx, x);
  double s = 0;
  for (double x : z) s += std::exp(x - mx);
  const double lse = mx + std::log(s);
  RowLosses r;
  r.ce = lse - z[p.targets[i]];
  const int32_t* ids = &p.ids[i * p.k];
  const float* lp = &p.logprobs[i * p.k];
  double ps = 0, pt = 0;
  for (int64_t j = 0; j < p.k; ++j) {
    ps += std::exp(z[ids[j]] - lse);
    pt += std::exp(static_cast<double>(lp[j]));
  }
  double b = pt * std::log(pt / ps);
  if (p.k < p.v) b += (1 - pt) * std::log((1 - pt) / (1 - ps));
  // a = softmax_K(log p_T / tau), b = softmax_K(z_K / tau)
  std::vector<double> a(p.k), bs(p.k);
  double sa = 0, sb = 0;
  for (int64_t j = 0; j < p.k; ++j) {
    a[j] = std::exp(lp[j] / p.tau);
    bs[j] = std::exp(z[ids[j]] / p.tau);
    sa += a[j], sb += bs[j];
  }
  double c = 0;
  for (int64_t j = 0; j < p.k; ++j) c += a[j] / sa * std::log((a[j] / sa) / (bs[j] / sb));
  const double scale = p.tau_squared ? p.tau * p.tau : 1.0;
  r.kd = b + scale * pt * c;
  return r;
}

struct Reference {
  double ce_sum = 0, kd_sum = 0;
  std::vector<double> row_kd, dh, dw;
};

Reference reference(const Problem& p, const std::vector<float>& dw0) {
  Reference r;
  r.row_kd.assign(p.n, 0.0);
  r.dh.assign(p.n * p.c, 0.0);
  r.dw.assign(dw0.begin(), dw0.end());
  std::vector<double> z(p.v);
  for (int64_t i = 0; i < p.n; ++i) {
    const double mask = p.mask[i];
    if (mask == 0) continue;
    for (int64_t j = 0; j < p.v; ++j) {
      double s = 0;
      for (int64_t q = 0; q < p.c; ++q) s += static_cast<double>(p.h[i * p.c + q]) * p.w[j * p.c + q];
      z[j] = s;
    }
    const RowLosses l = reference_row(p, i, z);
    r.row_kd[i] = l.kd;
    r.ce_sum += mask * l.ce;
    r.kd_sum += mask * l.kd;
    // d(row loss)/dz_j by central differences of CE + lambda * KD, in double.
    constexpr double kEps = 1e-5;
    for (int64_t j = 0; j < p.v; ++j) {
      const double z0 = z[j];
      z[j] = z0 + kEps;
      const RowLosses up = reference_row(p, i, z);
      z[j] = z0 - kEps;
      const RowLosses down = reference_row(p, i, z);
      z[j] = z0;
      const double dz = p.grad_scale * mask *
                        ((up.ce + p.lambda * up.kd) - (down.ce + p.lambda * down.kd)) / (2 * kEps);
      for (int64_t q = 0; q < p.c; ++q) {
        r.dh[i * p.c + q] += dz * p.w[j * p.c + q];
        r.dw[j * p.c + q] += dz * p.h[i * p.c + q];
      }
    }
  }
  return r;
}

void expect_matches(const Outputs& o, const Reference& r, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_NEAR(o.result.loss_sum, r.ce_sum, 1e-5 * std::max(1.0, r.ce_sum));
  EXPECT_NEAR(o.result.kd_sum, r.kd_sum, 1e-5 * std::max(1.0, r.kd_sum));
  expect_close(o.row_kd, r.row_kd, 1e-5, "row_kd", 1e-6);
  expect_close(o.dh, r.dh, 1e-4, "dh");
  expect_close(o.dw, r.dw, 1e-4, "dw");
}

TEST(TopKDistill, FusedMatchesUnfusedReferenceAndFiniteDifferences) {
  cpu::CpuBackendOptions opts;
  opts.lm_head_block_rows = 16;  // N = 37 spans three blocks, the last one partial
  cpu::CpuBackend be(opts);
  Problem p = make_problem(37, 12, 97, 8, 1);
  p.grad_scale = 0.5f;
  const auto dw0 = randn(p.v * p.c, 5);
  const Reference ref = reference(p, dw0);
  expect_matches(run(be, p, dw0), ref, "top-8 ids, tau 1");
  // Evaluation: the same losses, no gradient written.
  const Outputs eval = run(be, p, dw0, /*grads=*/false);
  EXPECT_NEAR(eval.result.kd_sum, ref.kd_sum, 1e-5 * ref.kd_sum);
  expect_close(eval.row_kd, ref.row_kd, 1e-5, "eval row_kd", 1e-6);
}

TEST(TopKDistill, TemperatureAndTauSquaredAndRandomSupport) {
  cpu::CpuBackend be;
  Problem p = make_problem(11, 8, 61, 5, 2, /*top_k=*/false);  // ids the student may rank low
  p.tau = 2.5f;
  p.tau_squared = true;
  p.lambda = 1.3f;
  const auto dw0 = randn(p.v * p.c, 6);
  expect_matches(run(be, p, dw0), reference(p, dw0), "tau 2.5, tau^2, random ids");
  p.tau = 0.5f;
  p.tau_squared = false;
  expect_matches(run(be, p, dw0), reference(p, dw0), "tau 0.5");
}

TEST(TopKDistill, CoveringTheVocabularyAtTauOneIsTheFullKl) {
  cpu::CpuBackend be;
  Problem p = make_problem(9, 8, 23, 23, 3);  // K = V
  const auto dw0 = randn(p.v * p.c, 7);
  const Outputs out = run(be, p, dw0);
  // KL(p_T || p_S) over the whole vocabulary, computed here directly.
  double kl_sum = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    std::vector<double> z(p.v);
    for (int64_t j = 0; j < p.v; ++j) {
      for (int64_t q = 0; q < p.c; ++q) z[j] += static_cast<double>(p.h[i * p.c + q]) * p.w[j * p.c + q];
    }
    double mx = -INFINITY;
    for (double x : z) mx = std::max(mx, x);
    double s = 0;
    for (double x : z) s += std::exp(x - mx);
    const double lse = mx + std::log(s);
    double kl = 0;
    for (int64_t j = 0; j < p.k; ++j) {
      const double lt = p.logprobs[i * p.k + j];
      kl += std::exp(lt) * (lt - (z[p.ids[i * p.k + j]] - lse));
    }
    EXPECT_NEAR(out.row_kd[i], p.mask[i] != 0 ? kl : 0.0, 1e-5 * std::max(1.0, kl)) << "row " << i;
    kl_sum += p.mask[i] * kl;
  }
  EXPECT_NEAR(out.result.kd_sum, kl_sum, 1e-5 * kl_sum);
  expect_matches(out, reference(p, dw0), "K = V");
}

TEST(TopKDistill, StudentWithAlmostNoMassOnTheTeacherIdsStaysFinite) {
  cpu::CpuBackend be;
  Problem p = make_problem(6, 4, 40, 4, 4);
  // Push the student's logits at the first row's teacher ids 40 nats down: P_S ~ e^-40.
  for (int64_t j = 0; j < p.k; ++j) {
    const int32_t id = p.ids[j];
    for (int64_t q = 0; q < p.c; ++q) p.w[id * p.c + q] = p.h[q] >= 0 ? -10.0f : 10.0f;
  }
  const auto dw0 = randn(p.v * p.c, 8);
  const Outputs out = run(be, p, dw0);
  ASSERT_TRUE(std::isfinite(out.result.kd_sum));
  for (float d : out.dh) ASSERT_TRUE(std::isfinite(d));
  expect_matches(out, reference(p, dw0), "P_S tiny");
}

TEST(TopKDistill, TeacherIdOutsideVocabularyNamesTheRow) {
  cpu::CpuBackend be;
  Problem p = make_problem(5, 4, 17, 3, 5);
  p.ids[3 * p.k + 1] = 17;
  const auto dw0 = randn(p.v * p.c, 9);
  try {
    run(be, p, dw0);
    ADD_FAILURE() << "expected an Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("row 3 has teacher id 17"), std::string::npos) << msg;
  }
}

}  // namespace
