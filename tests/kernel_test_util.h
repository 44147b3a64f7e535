// Helpers for the kernel tests: deterministic random tensors, comparison of a float result with
// a double-precision reference, and central finite differences of a scalar loss.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "common/rng.h"  // cadtrain::Rng: identical tensors on every platform

namespace cadtrain::test {

// Normal(0, scale^2) floats.
inline std::vector<float> randn(size_t n, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(scale * rng.normal());
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ||got - ref||_2 / ||ref||_2 (or the absolute norm when ref is zero).
inline double rel_l2(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Every element within rtol of the reference, measured against the larger of |ref_i|, the rms of
// ref (so that elements near zero are not held to a relative bound they cannot meet) and `floor`
// (for references that are exactly zero, where float rounding leaves ~1e-7). Reports the worst
// element.
inline void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double rtol,
                         const std::string& what, double floor = 0) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double ss = 0;
  for (double r : ref) ss += r * r;
  const double rms = ref.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(ref.size()));
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(got[i] - ref[i]) / std::max({std::abs(ref[i]), rms, floor, 1e-30});
    if (!(err <= worst)) {  // also catches NaN
      worst = std::isnan(err) ? INFINITY : err;
      worst_i = i;
    }
  }
  if (std::getenv("CADTRAIN_TEST_VERBOSE") != nullptr) std::printf("  %-28s worst %.2e (tol %.0e)\n", what.c_str(), worst, rtol);
  EXPECT_LE(worst, rtol) << what << ": element " << worst_i << " is " << (ref.empty() ? 0 : got[worst_i])
                         << ", reference " << (ref.empty() ? 0 : ref[worst_i]);
}

// Central differences (L(x + eps e_i) - L(x - eps e_i)) / 2 eps of `loss` at up to `samples`
// random coordinates i of x (all of them when x is smaller), against `grad`. Expects the relative
// L2 error over those coordinates within rtol. `loss` reads x, which is perturbed in place and
// restored.
inline void expect_fd_grad(std::vector<float>& x, const std::vector<float>& grad, const std::function<double()>& loss,
                           float eps, double rtol, const std::string& what, size_t samples = 24,
                           uint64_t seed = 99) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  std::vector<size_t> idx;
  if (x.size() <= samples) {
    for (size_t i = 0; i < x.size(); ++i) idx.push_back(i);
  } else {
    Rng rng(seed);
    for (size_t s = 0; s < samples; ++s) idx.push_back(rng.below(x.size()));
  }
  double num = 0, den = 0;
  for (size_t i : idx) {
    const float saved = x[i];
    x[i] = saved + eps;
    const double plus = loss();
    x[i] = saved - eps;
    const double minus = loss();
    x[i] = saved;
    // The perturbation actually applied, (saved + eps) - (saved - eps), is not exactly 2 eps in float.
    const double fd = (plus - minus) / (static_cast<double>(saved + eps) - static_cast<double>(saved - eps));
    num += (fd - grad[i]) * (fd - grad[i]);
    den += fd * fd;
  }
  const double err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (std::getenv("CADTRAIN_TEST_VERBOSE") != nullptr) std::printf("  %-28s fd    %.2e (tol %.0e)\n", what.c_str(), err, rtol);
  EXPECT_LE(err, rtol) << what << ": finite differences disagree with the backward";
}

// sum_i r_i * y_i in double: the random scalar loss whose gradient w.r.t. y is r.
inline double dot(const std::vector<float>& r, const std::vector<float>& y) {
  double s = 0;
  for (size_t i = 0; i < r.size(); ++i) s += static_cast<double>(r[i]) * y[i];
  return s;
}

inline bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

}  // namespace cadtrain::test
