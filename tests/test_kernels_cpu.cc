// The CPU backend's ops against plain double-precision references written here, and every
// backward against both its double reference and central finite differences of a random scalar
// loss L = sum(r * f(x)) computed with the float op itself.
//
// Tolerances (inputs of order 1):
//  - forward vs double reference: each element within kFwdTol = 1e-5 of the reference, relative to
//    max(|ref_i|, rms(ref)) (float rounding through a few operations is ~1e-7);
//  - analytic backward vs double reference: kBwdTol = 1e-4, same measure;
//  - finite differences: eps kFdEps = 1e-2, relative L2 error over up to 24 sampled coordinates
//    below kFdTol = 2e-3 (the truncation error is O(eps^2) ~ 1e-4; the float noise of L, summed
//    in double, is ~1e-6 / 2 eps ~ 1e-4);
//  - ops that are exact in float (copies, mul, accumulate, scale) are compared for equality.
// Sizes are small (the Debug + sanitizer build runs these too); some cases are just large enough
// to take the multi-threaded paths (at least cpu::kParallelMin elements).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/error.h"
#include "kernel_test_util.h"
#include "kernels/cpu/blas_info.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_util.h"
#include "kernels/sgemm_peak.h"

using namespace cadtrain;
using namespace cadtrain::kernels;
using cadtrain::test::dot;
using cadtrain::test::expect_close;
using cadtrain::test::expect_fd_grad;
using cadtrain::test::randn;
using cadtrain::test::to_double;

namespace {

constexpr double kFwdTol = 1e-5;
constexpr double kBwdTol = 1e-4;
constexpr float kFdEps = 1e-2f;
constexpr double kFdTol = 2e-3;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace

TEST(CpuBlas, OpenMPBuildOfOpenBLASIsLoaded) {
  // 2 = OpenMP: sgemm inside our parallel regions then stays on the calling thread.
  EXPECT_EQ(cpu::blas_parallel_mode(), 2) << cpu::blas_config();
  EXPECT_NE(cpu::blas_library_path().find("openblas-openmp"), std::string::npos)
      << "loaded " << cpu::blas_library_path() << "; the executable's RUNPATH should name the openblas-openmp dir";
  EXPECT_NE(cpu::blas_config().find("OpenBLAS"), std::string::npos);
  EXPECT_NE(make_cpu_backend()->name().find("OpenBLAS"), std::string::npos);
}

TEST(CpuBlas, SgemmPeakIsMeasured) {
  const double gflops = measure_sgemm_gflops(64, 1);
  EXPECT_TRUE(std::isfinite(gflops) && gflops > 0) << gflops;
  EXPECT_THROW(measure_sgemm_gflops(0, 1), Error);
}

TEST(CpuMath, FastExpAccuracyAndLimits) {
  double worst = 0;
  for (int i = -870000; i <= 880000; i += 7) {
    const float x = static_cast<float>(i) * 1e-4f;
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(cpu::fast_exp(x) - ref) / ref);
  }
  EXPECT_LT(worst, 4e-7);  // a few float ulp (2^-24 = 6e-8)
  EXPECT_EQ(cpu::fast_exp(0.0f), 1.0f);
  EXPECT_EQ(cpu::fast_exp(-INFINITY), 0.0f);
  EXPECT_EQ(cpu::fast_exp(-1000.0f), 0.0f);
  EXPECT_EQ(cpu::fast_exp(1000.0f), INFINITY);
  EXPECT_EQ(cpu::fast_exp(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(cpu::fast_exp(kNaN)));
  EXPECT_EQ(cpu::fast_sigmoid(-1000.0f), 0.0f);
  EXPECT_EQ(cpu::fast_sigmoid(1000.0f), 1.0f);
}

TEST(CpuMath, MaxOfEveryLengthSkipsNaN) {
  for (int64_t n = 0; n <= 70; ++n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) x[j] = static_cast<float>((j * 37) % 23) - 30.0f;
    const float want = n == 0 ? -INFINITY : *std::max_element(x.begin(), x.end());
    EXPECT_EQ(cpu::max_of(x.data(), n), want) << "n " << n;
    if (n == 0) continue;
    // The maximum at every position, and NaNs anywhere (including lane 0 and the tail), skipped.
    for (int64_t at = 0; at < n; ++at) {
      std::vector<float> y = x;
      y[at] = 100.0f;
      y[(at + 1) % n] = kNaN;
      const float got = cpu::max_of(y.data(), n);
      EXPECT_EQ(got, n == 1 ? -INFINITY : 100.0f) << "n " << n << " max at " << at;
    }
  }
}

TEST(CpuMemory, AllocIsZeroedAndAligned) {
  auto be = make_cpu_backend();
  const size_t n = 5 * cpu::kBlock + 5;
  float* a = be->alloc(n);
  float* b = be->alloc(n);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(a[i], 0.0f);
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<float>(i);
  be->copy(b, a, n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(b[i], static_cast<float>(i));
  be->zero(b + 1, n - 2);
  EXPECT_EQ(b[0], 0.0f);
  EXPECT_EQ(b[1], 0.0f);
  EXPECT_EQ(b[n - 2], 0.0f);
  EXPECT_EQ(b[n - 1], static_cast<float>(n - 1));
  float* empty = be->alloc(0);
  EXPECT_NE(empty, nullptr);
  be->free(empty);
  be->free(a);
  be->free(b);
  be->free(nullptr);
}

// ---------------------------------------------------------------------------------------------
// linear: y[N,O] = x[N,I] W[O,I]^T

TEST(CpuLinear, ForwardAndBackwardOddSizes) {
  cpu::CpuBackend be;
  const int64_t n = 7, in = 13, out = 5;
  auto x = randn(n * in, 1), w = randn(out * in, 2), r = randn(n * out, 3);
  std::vector<float> y(n * out, kNaN);
  be.linear_forward(y.data(), x.data(), w.data(), n, in, out);
  std::vector<double> y_ref(n * out, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k) y_ref[i * out + o] += static_cast<double>(x[i * in + k]) * w[o * in + k];
  expect_close(y, y_ref, kFwdTol, "linear y");

  // dx = dy W, dw = dy^T x with dy = r
  std::vector<double> dx_ref(n * in, 0.0), dw_ref(out * in, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k) {
        dx_ref[i * in + k] += static_cast<double>(r[i * out + o]) * w[o * in + k];
        dw_ref[o * in + k] += static_cast<double>(r[i * out + o]) * x[i * in + k];
      }
  for (const bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate_dx" : "overwrite dx");
    // Overwrite must ignore what dx held (even NaN); accumulate adds to it. dw always adds.
    const auto dx0 = accumulate ? randn(n * in, 4) : std::vector<float>(n * in, kNaN);
    const auto dw0 = randn(out * in, 5);
    auto dx = dx0, dw = dw0;
    be.linear_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), n, in, out, accumulate);
    auto dx_want = dx_ref, dw_want = dw_ref;
    for (size_t i = 0; i < dx_want.size(); ++i) dx_want[i] += accumulate ? dx0[i] : 0.0;
    for (size_t i = 0; i < dw_want.size(); ++i) dw_want[i] += dw0[i];
    expect_close(dx, dx_want, kBwdTol, "linear dx");
    expect_close(dw, dw_want, kBwdTol, "linear dw");
  }

  // dx may be nullptr (the first layer's input needs no gradient).
  std::vector<float> dw(out * in, 0.0f);
  be.linear_backward(nullptr, dw.data(), r.data(), x.data(), w.data(), n, in, out, false);
  expect_close(dw, dw_ref, kBwdTol, "linear dw without dx");

  std::vector<float> gx(n * in, 0.0f), gw(out * in, 0.0f);
  be.linear_backward(gx.data(), gw.data(), r.data(), x.data(), w.data(), n, in, out, false);
  auto loss = [&] {
    be.linear_forward(y.data(), x.data(), w.data(), n, in, out);
    return dot(r, y);
  };
  expect_fd_grad(x, gx, loss, kFdEps, kFdTol, "linear dL/dx");
  expect_fd_grad(w, gw, loss, kFdEps, kFdTol, "linear dL/dw");
}

TEST(CpuLinear, EmptyDimensions) {
  cpu::CpuBackend be;
  std::vector<float> y(6, kNaN), dx(6, kNaN), dw(3, 1.0f);
  be.linear_forward(y.data(), nullptr, nullptr, 2, 0, 3);  // empty sum: y = 0
  for (float v : y) EXPECT_EQ(v, 0.0f);
  be.linear_backward(dx.data(), dw.data(), nullptr, nullptr, nullptr, 2, 3, 0, false);
  for (float v : dx) EXPECT_EQ(v, 0.0f);
  for (float v : dw) EXPECT_EQ(v, 1.0f);
  be.linear_forward(nullptr, nullptr, nullptr, 0, 4, 4);
  EXPECT_THROW(be.linear_forward(y.data(), y.data(), y.data(), -1, 2, 3), Error);
}

// ---------------------------------------------------------------------------------------------
// embedding: out[i] = table[tokens[i]]; dtable[tokens[i]] += dout[i]

TEST(CpuEmbedding, RepeatedTokens) {
  cpu::CpuBackend be;
  for (const int64_t c : {int64_t{37}, int64_t{129}}) {  // 129 * 520 rows takes the parallel path
    SCOPED_TRACE(c);
    const int64_t vocab = 11, n = 520;
    std::vector<uint32_t> tokens(n);
    for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<uint32_t>((i * 7) % 5 + (i % 3 == 0 ? 6 : 0));
    auto table = randn(vocab * c, 10), r = randn(n * c, 11);
    std::vector<float> out(n * c, kNaN);
    be.embedding_forward(out.data(), tokens.data(), table.data(), n, c);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) ASSERT_EQ(out[i * c + j], table[tokens[i] * c + j]);

    const auto d0 = randn(vocab * c, 12);
    auto dtable = d0;
    be.embedding_backward(dtable.data(), r.data(), tokens.data(), n, c);
    auto want = to_double(d0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) want[tokens[i] * c + j] += r[i * c + j];
    expect_close(dtable, want, kBwdTol, "embedding dtable");

    std::vector<float> g(vocab * c, 0.0f);
    be.embedding_backward(g.data(), r.data(), tokens.data(), n, c);
    expect_fd_grad(
        table, g,
        [&] {
          be.embedding_forward(out.data(), tokens.data(), table.data(), n, c);
          return dot(r, out);
        },
        kFdEps, kFdTol, "embedding dL/dtable");
  }
}

// ---------------------------------------------------------------------------------------------
// rmsnorm: y = x * rstd * w, rstd = (mean(x^2) + eps)^(-1/2)

TEST(CpuRmsNorm, ForwardAndBackward) {
  cpu::CpuBackend be;
  const float eps = 1e-5f;
  for (const auto& [rows, c] : {std::pair<int64_t, int64_t>{9, 37}, {260, 260}}) {
    SCOPED_TRACE(c);
    auto x = randn(rows * c, 20), r = randn(rows * c, 21);
    auto w = randn(c, 22, 0.1);
    for (auto& v : w) v += 1.0f;
    std::vector<float> y(rows * c), rstd(rows);
    be.rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), rows, c, eps);

    std::vector<double> y_ref(rows * c), rstd_ref(rows), dx_ref(rows * c), dw_ref(c, 0.0);
    for (int64_t i = 0; i < rows; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < c; ++j) ss += static_cast<double>(x[i * c + j]) * x[i * c + j];
      const double rs = 1.0 / std::sqrt(ss / c + eps);
      rstd_ref[i] = rs;
      double dot_dyw_x = 0;
      for (int64_t j = 0; j < c; ++j) {
        y_ref[i * c + j] = x[i * c + j] * rs * w[j];
        dot_dyw_x += static_cast<double>(r[i * c + j]) * w[j] * x[i * c + j];
        dw_ref[j] += static_cast<double>(r[i * c + j]) * x[i * c + j] * rs;
      }
      // dx_k = rs w_k dy_k - x_k rs^3 / C * sum_j dy_j w_j x_j
      for (int64_t j = 0; j < c; ++j)
        dx_ref[i * c + j] = rs * w[j] * r[i * c + j] - x[i * c + j] * rs * rs * rs * dot_dyw_x / c;
    }
    expect_close(y, y_ref, kFwdTol, "rmsnorm y");
    expect_close(rstd, rstd_ref, kFwdTol, "rmsnorm rstd");

    const auto dw0 = randn(c, 23);
    std::vector<float> dx(rows * c, kNaN);
    auto dw = dw0;
    be.rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), rows, c);
    for (int64_t j = 0; j < c; ++j) dw_ref[j] += dw0[j];
    expect_close(dx, dx_ref, kBwdTol, "rmsnorm dx");
    expect_close(dw, dw_ref, kBwdTol, "rmsnorm dw");

    std::vector<float> gw(c, 0.0f);
    be.rmsnorm_backward(dx.data(), gw.data(), r.data(), x.data(), w.data(), rstd.data(), rows, c);
    auto loss = [&] {
      be.rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), rows, c, eps);
      return dot(r, y);
    };
    expect_fd_grad(x, dx, loss, kFdEps, kFdTol, "rmsnorm dL/dx");
    expect_fd_grad(w, gw, loss, kFdEps, kFdTol, "rmsnorm dL/dw");
  }
}

// ---------------------------------------------------------------------------------------------
// rope: pairs (x[2i], x[2i+1]) rotated by pos * theta^(-2i/D)

namespace {
// The rotation in double, angle included; sign -1 is the transpose.
std::vector<double> rope_ref(const std::vector<float>& x, const std::vector<int32_t>& pos, int64_t heads, int64_t d,
                             double theta, double sign) {
  std::vector<double> y(x.size());
  for (size_t t = 0; t < pos.size(); ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < d / 2; ++i) {
        const double a = sign * pos[t] * std::pow(theta, -2.0 * i / d);
        const size_t at = (t * heads + h) * d + 2 * i;
        y[at] = x[at] * std::cos(a) - x[at + 1] * std::sin(a);
        y[at + 1] = x[at] * std::sin(a) + x[at + 1] * std::cos(a);
      }
  return y;
}
}  // namespace

TEST(CpuRope, LargePositionsMatchDouble) {
  cpu::CpuBackend be;
  for (const int64_t d : {int64_t{64}, int64_t{128}}) {
    for (const float theta : {10000.0f, 500000.0f}) {
      SCOPED_TRACE(fmt::format("d {} theta {}", d, theta));
      const std::vector<int32_t> pos = {0, 1, 7, 4095, 100000, 524287, 100000};
      const int64_t n = static_cast<int64_t>(pos.size()), heads = 3;
      const auto x0 = randn(n * heads * d, 30);
      auto x = x0;
      be.rope_forward(x.data(), pos.data(), n, heads, d, theta);
      expect_close(x, rope_ref(x0, pos, heads, d, theta, 1.0), kFwdTol, "rope forward");
      // The backward is the transpose (= inverse) rotation: applied after the forward it restores x.
      be.rope_backward(x.data(), pos.data(), n, heads, d, theta);
      expect_close(x, to_double(x0), kFwdTol, "rope backward(forward(x))");
      auto dy = randn(n * heads * d, 31);
      const auto dy0 = dy;
      be.rope_backward(dy.data(), pos.data(), n, heads, d, theta);
      expect_close(dy, rope_ref(dy0, pos, heads, d, theta, -1.0), kBwdTol, "rope backward");
      auto xs = x0;
      expect_fd_grad(
          xs, dy,
          [&] {
            auto y = xs;
            be.rope_forward(y.data(), pos.data(), n, heads, d, theta);
            return dot(dy0, y);
          },
          kFdEps, kFdTol, "rope dL/dx");
    }
  }
}

TEST(CpuRope, ParallelPathAndErrors) {
  cpu::CpuBackend be;
  const int64_t n = 130, heads = 4, d = 128;  // 66560 elements: several threads
  std::vector<int32_t> pos(n);
  for (int64_t t = 0; t < n; ++t) pos[t] = static_cast<int32_t>(t * 1543);
  const auto x0 = randn(n * heads * d, 32);
  auto x = x0;
  be.rope_forward(x.data(), pos.data(), n, heads, d, 10000.0f);
  expect_close(x, rope_ref(x0, pos, heads, d, 10000.0, 1.0), kFwdTol, "rope forward");
  EXPECT_THROW(be.rope_forward(x.data(), pos.data(), n, heads, 63, 10000.0f), Error);
  EXPECT_THROW(be.rope_forward(x.data(), pos.data(), n, heads, 64, 0.0f), Error);
}

// ---------------------------------------------------------------------------------------------
// swiglu: h = silu(g) * u

TEST(CpuSwiglu, ForwardAndBackward) {
  cpu::CpuBackend be;
  const size_t count = 4 * cpu::kBlock + 5;
  auto g = randn(count, 40, 3.0), u = randn(count, 41), r = randn(count, 42);
  // Saturated gates must stay finite: sigmoid's exp over- or underflows there.
  g[0] = 30.0f, g[1] = -30.0f, g[2] = 90.0f, g[3] = -90.0f, g[4] = 0.0f;
  std::vector<float> h(count), dg(count, kNaN), du(count, kNaN);
  be.swiglu_forward(h.data(), g.data(), u.data(), count);
  be.swiglu_backward(dg.data(), du.data(), r.data(), g.data(), u.data(), count);
  std::vector<double> h_ref(count), dg_ref(count), du_ref(count);
  for (size_t i = 0; i < count; ++i) {
    const double gi = g[i], s = 1.0 / (1.0 + std::exp(-gi));
    h_ref[i] = gi * s * u[i];
    dg_ref[i] = r[i] * u[i] * (s + gi * s * (1.0 - s));
    du_ref[i] = r[i] * gi * s;
  }
  EXPECT_TRUE(test::all_finite(h) && test::all_finite(dg) && test::all_finite(du));
  expect_close(h, h_ref, kFwdTol, "swiglu h");
  expect_close(dg, dg_ref, kBwdTol, "swiglu dgate");
  expect_close(du, du_ref, kBwdTol, "swiglu dup");
  auto loss = [&] {
    be.swiglu_forward(h.data(), g.data(), u.data(), count);
    return dot(r, h);
  };
  expect_fd_grad(g, dg, loss, kFdEps, kFdTol, "swiglu dL/dgate");
  expect_fd_grad(u, du, loss, kFdEps, kFdTol, "swiglu dL/dup");
}

// ---------------------------------------------------------------------------------------------
// mul: out = a * b (exact in float)

TEST(CpuMul, ForwardAndBackward) {
  cpu::CpuBackend be;
  const size_t count = 4 * cpu::kBlock + 77;
  auto a = randn(count, 50), b = randn(count, 51), r = randn(count, 52);
  std::vector<float> out(count), da(count), db(count);
  be.mul_forward(out.data(), a.data(), b.data(), count);
  be.mul_backward(da.data(), db.data(), r.data(), a.data(), b.data(), count);
  for (size_t i = 0; i < count; ++i) {
    ASSERT_EQ(out[i], a[i] * b[i]);
    ASSERT_EQ(da[i], r[i] * b[i]);
    ASSERT_EQ(db[i], r[i] * a[i]);
  }
  auto loss = [&] {
    be.mul_forward(out.data(), a.data(), b.data(), count);
    return dot(r, out);
  };
  expect_fd_grad(a, da, loss, kFdEps, kFdTol, "mul dL/da");
  expect_fd_grad(b, db, loss, kFdEps, kFdTol, "mul dL/db");
}

// ---------------------------------------------------------------------------------------------
// short_conv: z[t,c] = sum_j w[c,j] y[t-K+1+j, c], zero history before each sequence start

namespace {
struct ConvRef {
  std::vector<double> z, dy, dw;
};
ConvRef short_conv_ref(const std::vector<float>& y, const std::vector<float>& w, const std::vector<float>& dz,
                       const std::vector<int32_t>& cu, int64_t c, int64_t k) {
  const int64_t n = cu.back();
  ConvRef ref{std::vector<double>(n * c, 0.0), std::vector<double>(n * c, 0.0), std::vector<double>(c * k, 0.0)};
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t src = t - k + 1 + j;
        if (src < cu[s]) continue;
        for (int64_t ch = 0; ch < c; ++ch) {
          ref.z[t * c + ch] += static_cast<double>(w[ch * k + j]) * y[src * c + ch];
          ref.dy[src * c + ch] += static_cast<double>(w[ch * k + j]) * dz[t * c + ch];
          ref.dw[ch * k + j] += static_cast<double>(dz[t * c + ch]) * y[src * c + ch];
        }
      }
  return ref;
}
}  // namespace

TEST(CpuShortConv, SequencesShorterThanKernel) {
  cpu::CpuBackend be;
  struct Case {
    std::vector<int32_t> cu;
    int64_t c, k;
  };
  const std::vector<Case> cases = {
      {{0, 5, 6, 6, 8, 17, 20}, 19, 3},  // lengths 5, 1, 0, 2, 9, 3
      {{0, 5, 6, 6, 8, 17, 20}, 19, 4},
      {{0, 700, 1000, 1002}, 40, 3},  // large enough for the threaded paths
  };
  for (const auto& cs : cases) {
    SCOPED_TRACE(fmt::format("c {} k {} tokens {}", cs.c, cs.k, cs.cu.back()));
    const int64_t n = cs.cu.back(), n_seqs = static_cast<int64_t>(cs.cu.size()) - 1;
    auto y = randn(n * cs.c, 60), w = randn(cs.c * cs.k, 61, 0.5), r = randn(n * cs.c, 62);
    std::vector<float> z(n * cs.c, kNaN), dy(n * cs.c, kNaN);
    const auto dw0 = randn(cs.c * cs.k, 63);
    auto dw = dw0;
    be.short_conv_forward(z.data(), y.data(), w.data(), cs.cu.data(), n_seqs, cs.c, cs.k);
    be.short_conv_backward(dy.data(), dw.data(), r.data(), y.data(), w.data(), cs.cu.data(), n_seqs, cs.c, cs.k);
    ConvRef ref = short_conv_ref(y, w, r, cs.cu, cs.c, cs.k);
    for (size_t i = 0; i < dw0.size(); ++i) ref.dw[i] += dw0[i];
    expect_close(z, ref.z, kFwdTol, "short_conv z");
    expect_close(dy, ref.dy, kBwdTol, "short_conv dy");
    expect_close(dw, ref.dw, kBwdTol, "short_conv dw");

    std::vector<float> gw(cs.c * cs.k, 0.0f);
    be.short_conv_backward(dy.data(), gw.data(), r.data(), y.data(), w.data(), cs.cu.data(), n_seqs, cs.c, cs.k);
    auto loss = [&] {
      be.short_conv_forward(z.data(), y.data(), w.data(), cs.cu.data(), n_seqs, cs.c, cs.k);
      return dot(r, z);
    };
    expect_fd_grad(y, dy, loss, kFdEps, kFdTol, "short_conv dL/dy");
    expect_fd_grad(w, gw, loss, kFdEps, kFdTol, "short_conv dL/dw");
  }
  std::vector<float> buf(64);
  const std::vector<int32_t> bad = {0, 4, 2};
  EXPECT_THROW(be.short_conv_forward(buf.data(), buf.data(), buf.data(), bad.data(), 2, 4, 3), Error);
}

// ---------------------------------------------------------------------------------------------
// accumulate, scale, sum_squares

TEST(CpuElementwise, AccumulateAndScaleMatchPlainLoops) {
  cpu::CpuBackend be;
  const size_t count = 4 * cpu::kBlock + 3;
  const auto x = randn(count, 70), y0 = randn(count, 71);
  auto y = y0;
  be.accumulate(y.data(), x.data(), count);
  for (size_t i = 0; i < count; ++i) ASSERT_EQ(y[i], y0[i] + x[i]);
  be.scale(y.data(), 0.37f, count);
  for (size_t i = 0; i < count; ++i) ASSERT_EQ(y[i], (y0[i] + x[i]) * 0.37f);
}

TEST(CpuElementwise, SumSquaresInDoubleAndNaN) {
  cpu::CpuBackend be;
  const size_t count = 5 * cpu::kBlock + 17;
  auto x = randn(count, 72, 10.0);
  double ref = 0;
  for (float v : x) ref += static_cast<double>(v) * v;  // each square is exact in double
  EXPECT_NEAR(be.sum_squares(x.data(), count), ref, 1e-12 * ref);
  EXPECT_EQ(be.sum_squares(x.data(), 0), 0.0);
  x[cpu::kBlock + 3] = kNaN;
  EXPECT_TRUE(std::isnan(be.sum_squares(x.data(), count)));
  x[cpu::kBlock + 3] = INFINITY;
  EXPECT_EQ(be.sum_squares(x.data(), count), INFINITY);
}

// ---------------------------------------------------------------------------------------------
// adamw: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p)

TEST(CpuAdamW, MatchesHandLoopOverSteps) {
  cpu::CpuBackend be;
  const size_t count = 4 * cpu::kBlock + 3;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
  auto p = randn(count, 80);
  std::vector<float> m(count, 0.0f), v(count, 0.0f);
  auto p_ref = to_double(p);
  std::vector<double> m_ref(count, 0.0), v_ref(count, 0.0);
  for (int64_t step = 1; step <= 5; ++step) {
    const auto g = randn(count, 80 + static_cast<uint64_t>(step));
    be.adamw_step(p.data(), g.data(), m.data(), v.data(), count, lr, b1, b2, eps, wd, step);
    const double bc1 = 1.0 - std::pow(static_cast<double>(b1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(b2), static_cast<double>(step));
    for (size_t i = 0; i < count; ++i) {
      m_ref[i] = b1 * m_ref[i] + (1.0 - b1) * g[i];
      v_ref[i] = b2 * v_ref[i] + (1.0 - b2) * g[i] * g[i];
      p_ref[i] -= lr * ((m_ref[i] / bc1) / (std::sqrt(v_ref[i] / bc2) + eps) + wd * p_ref[i]);
    }
  }
  expect_close(p, p_ref, kFwdTol, "adamw p");
  expect_close(m, m_ref, kFwdTol, "adamw m");
  expect_close(v, v_ref, kFwdTol, "adamw v");
  EXPECT_THROW(be.adamw_step(p.data(), p.data(), m.data(), v.data(), count, lr, b1, b2, eps, wd, 0), Error);
}
