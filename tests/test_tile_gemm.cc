// The attention tiles' register-blocked products (kernels/cpu/tile_gemm.h) against a double
// reference: every shape remainder (rows not a multiple of 6, columns not a multiple of 16, k of
// 0 and 1), both layouts of A, both packers, alpha, accumulation, and the per-row limits.
#include "kernels/cpu/tile_gemm.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tests/kernel_test_util.h"

namespace cadtrain::kernels::cpu {
namespace {

using test::randn;

struct Case {
  int64_t m, n, k;
};

// Runs tile_gemm on random operands and compares every column a row needs. `limits_kind`: 0 none,
// 1 n_end, 2 k_end (A zeroed past it), 3 k_begin and k_end (A zeroed outside).
void check(const Case& cs, bool transposed_a, bool b_from_transpose, bool accumulate, int limits_kind, uint64_t seed) {
  const auto [m, n, k] = cs;
  const std::string what = fmt::format("m {} n {} k {} A^T {} B^T {} acc {} limits {}", m, n, k, transposed_a,
                                       b_from_transpose, accumulate, limits_kind);
  SCOPED_TRACE(what);
  const float alpha = 0.75f;
  Rng rng(seed);
  std::vector<int64_t> n_end(m, n), k_end(m, k), k_begin(m, 0);
  for (int64_t i = 0; i < m; ++i) {
    if (limits_kind == 1) n_end[i] = static_cast<int64_t>(rng.below(static_cast<uint32_t>(n + 1)));
    if (limits_kind >= 2) k_end[i] = static_cast<int64_t>(rng.below(static_cast<uint32_t>(k + 1)));
    if (limits_kind == 3) k_begin[i] = static_cast<int64_t>(rng.below(static_cast<uint32_t>(k_end[i] + 1)));
  }
  // A stored with padding in its leading dimension, so strides are not the plain shape.
  const int64_t lda = (transposed_a ? m : k) + 3;
  std::vector<float> a = randn(static_cast<size_t>((transposed_a ? k : m) * lda), seed + 1);
  auto a_at = [&](int64_t i, int64_t kk) -> float& { return transposed_a ? a[kk * lda + i] : a[i * lda + kk]; };
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t kk = 0; kk < k; ++kk) {
      if (kk < k_begin[i] || kk >= k_end[i]) a_at(i, kk) = 0.0f;
    }
  }
  // B [k, n], packed from a row-major copy or from a row-major copy of B^T.
  const int64_t ldb = n + 5, ldbt = k + 2;
  const std::vector<float> b = randn(static_cast<size_t>(std::max<int64_t>(k * ldb, 1)), seed + 2);
  std::vector<float> bt(static_cast<size_t>(std::max<int64_t>(n * ldbt, 1)));
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int64_t j = 0; j < n; ++j) bt[j * ldbt + kk] = b[kk * ldb + j];
  }
  std::vector<float> panels(static_cast<size_t>(packed_size(n, k)) + 1, -7.0f);
  if (b_from_transpose) {
    pack_transposed(panels.data(), bt.data(), ldbt, n, k);
  } else {
    pack_panels(panels.data(), b.data(), ldb, k, n);
  }
  EXPECT_EQ(panels.back(), -7.0f) << "packing wrote past packed_size";

  const int64_t ldc = n + 1;
  const std::vector<float> c0 = randn(static_cast<size_t>(m * ldc), seed + 3);
  std::vector<float> c = c0;
  const TileA ta = transposed_a ? TileA{a.data(), 1, lda} : TileA{a.data(), lda, 1};
  TileLimits lim;
  if (limits_kind == 1) lim.n_end = n_end.data();
  if (limits_kind >= 2) lim.k_end = k_end.data();
  if (limits_kind == 3) lim.k_begin = k_begin.data();
  tile_gemm(c.data(), ldc, ta, panels.data(), m, n, k, alpha, accumulate, lim);

  double worst = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = c[i * ldc + j];
      if (j >= n) {  // the padding column is never written
        EXPECT_EQ(got, c0[i * ldc + j]) << "row " << i << " padding column written";
        continue;
      }
      if (j >= n_end[i]) continue;  // unspecified
      double ref = 0, mag = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        const double t = static_cast<double>(a_at(i, kk)) * b[kk * ldb + j];
        ref += t;
        mag += std::abs(t);
      }
      ref *= alpha;
      if (accumulate) ref += c0[i * ldc + j];
      worst = std::max(worst, std::abs(got - ref) / (alpha * mag + std::abs(ref) + 1e-6));
    }
  }
  EXPECT_LE(worst, 2e-6) << "worst relative error (against the sum of |terms|)";
}

TEST(TileGemm, MatchesReferenceOnEveryRemainder) {
  const std::vector<Case> cases = {{1, 1, 1},  {6, 16, 8},   {7, 17, 3},   {5, 15, 1},  {13, 40, 64},
                                   {12, 32, 0}, {37, 100, 129}, {64, 128, 256}, {3, 16, 40}, {20, 9, 17}};
  uint64_t seed = 1;
  for (const Case& cs : cases) {
    for (const bool ta : {false, true}) {
      for (const bool bt : {false, true}) {
        for (const bool acc : {false, true}) {
          for (int limits = 0; limits <= 3; ++limits) check(cs, ta, bt, acc, limits, seed += 10);
        }
      }
    }
  }
}

TEST(TileGemm, PackersAgreeAndZeroPad) {
  // pack_panels(B) and pack_transposed(B^T) give the same panels, zero past column n.
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {15, 7}, {16, 8}, {33, 24}, {50, 13}}) {
    const int64_t ldb = n + 2, ldbt = k + 9;
    const std::vector<float> b = randn(static_cast<size_t>(k * ldb), 99);
    std::vector<float> bt(static_cast<size_t>(n * ldbt));
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int64_t j = 0; j < n; ++j) bt[j * ldbt + kk] = b[kk * ldb + j];
    }
    std::vector<float> p1(static_cast<size_t>(packed_size(n, k)), 5.0f), p2(p1.size(), -5.0f);
    pack_panels(p1.data(), b.data(), ldb, k, n);
    pack_transposed(p2.data(), bt.data(), ldbt, n, k);
    EXPECT_EQ(p1, p2) << "n " << n << " k " << k;
    for (int64_t p = 0; p * kTilePanel < n; ++p) {
      for (int64_t kk = 0; kk < k; ++kk) {
        for (int64_t col = 0; col < kTilePanel; ++col) {
          const int64_t j = p * kTilePanel + col;
          const float want = j < n ? b[kk * ldb + j] : 0.0f;
          ASSERT_EQ(p1[(p * k + kk) * kTilePanel + col], want) << "n " << n << " k " << k << " panel " << p;
        }
      }
    }
  }
}

}  // namespace
}  // namespace cadtrain::kernels::cpu
