// Vectorisable math for the CPU kernels. glibc's expf only vectorises under -ffast-math, and the
// loss and attention softmaxes (one exp per logit) would otherwise spend more time in scalar exp
// than in everything else that is not sgemm.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace cadtrain::kernels::cpu {

// e^x in float, relative error within a few ulp (tests/test_kernels_cpu.cc measures it) on
// [-87, 88]; 0 below -87 (true values there are < 1.7e-38), +inf above 88 (the true result
// overflows at 88.72), NaN stays NaN. Branch-free, so `#pragma omp simd` loops vectorise it.
inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  // ln 2 split in two (Cody-Waite): n * kLn2Hi is exact for |n| <= 128 (kLn2Hi has 9 significant
  // bits), so r = x - n ln2 keeps full float precision.
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
  constexpr float kShift = 12582912.0f;
  constexpr int32_t kShiftBits = 0x4B400000;

  // std::max/std::min keep a NaN x (the comparisons are false), so NaN reaches the result.
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float t = xc * kLog2e + kShift;
  const int32_t n = std::bit_cast<int32_t>(t) - kShiftBits;  // round(x / ln 2), in [-126, 127]
  const float nf = t - kShift;
  const float r = (xc - nf * kLn2Hi) - nf * kLn2Lo;  // |r| <= ln2 / 2
  // e^r by its degree-7 Taylor polynomial: truncation error r^8/8! < 6e-9 relative.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_n = std::bit_cast<float>(static_cast<uint32_t>(n + 127) << 23);  // 2^n, normal
  const float y = p * two_n;
  return x < -87.0f ? 0.0f : (x > 88.0f ? INFINITY : y);
}

// silu's sigmoid, 1 / (1 + e^-x): exact limits 0 and 1 at the ends of fast_exp's range.
inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// x[j] = e^(x[j] - shift) for j < n, in place; returns the sum of the new values, accumulated in
// Acc (the softmaxes' shared inner loop).
template <typename Acc>
inline Acc exp_in_place_sum(float* x, int64_t n, float shift) {
  Acc sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = fast_exp(x[j] - shift);
    x[j] = e;
    sum += e;
  }
  return sum;
}

// max(x[0..n)), -inf for n = 0; NaNs are skipped, as in a loop of std::max(m, x[j]). GCC 12 leaves
// `omp simd reduction(max)` over floats scalar (a third of the attention forward's softmax time
// at d=64), hence the explicit vectors.
inline float max_of(const float* x, int64_t n) {
  int64_t j = 0;
  float mx = -INFINITY;
#if defined(__AVX2__)
  if (n >= 16) {
    // _mm256_max_ps(v, acc) returns acc where v is NaN.
    __m256 a = _mm256_set1_ps(-INFINITY), b = a;
    for (; j + 16 <= n; j += 16) {
      a = _mm256_max_ps(_mm256_loadu_ps(x + j), a);
      b = _mm256_max_ps(_mm256_loadu_ps(x + j + 8), b);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_max_ps(a, b));
    for (const float v : lanes) mx = std::max(mx, v);
  }
#endif
  for (; j < n; ++j) mx = std::max(mx, x[j]);
  return mx;
}

}  // namespace cadtrain::kernels::cpu
