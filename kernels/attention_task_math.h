// The device-neutral arithmetic of the task contract (kernels/attention_tasks.h): which keys a
// query row of a task sees, how many (query, key) pairs a task has, and the exact merge of two
// partial results. The CPU kernels, the CUDA kernels (this header compiles as C++17 and as CUDA,
// host and device) and the cost model (task_pairs) all use these functions, so the three agree.
//
// Task geometry, task-local: query row r in [0, nq) has position q_pos0 + r, key row j in [0, nk)
// has position k_pos0 + j; with off = q_pos0 - k_pos0 a causal row r sees key rows
// [0, clamp(off + r + 1, 0, nk)), a non-causal row sees all nk.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CADTRAIN_HOST_DEVICE __host__ __device__
#else
#define CADTRAIN_HOST_DEVICE
#endif

namespace cadtrain::kernels::task_math {

CADTRAIN_HOST_DEVICE inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// Keys seen by task-local query row r.
CADTRAIN_HOST_DEVICE inline int64_t visible_keys(int64_t r, int64_t off, int64_t nk, bool causal) {
  return causal ? clamp64(off + r + 1, 0, nk) : nk;
}

// First task-local query row that sees key row j (nq when none).
CADTRAIN_HOST_DEVICE inline int64_t first_row_seeing(int64_t j, int64_t off, int64_t nq, bool causal) {
  return causal ? clamp64(j - off, 0, nq) : 0;
}

// sum over x in [x0, x1) of clamp(c + x, 0, cap), in closed form.
CADTRAIN_HOST_DEVICE inline int64_t sum_clamped(int64_t x0, int64_t x1, int64_t c, int64_t cap) {
  if (x1 <= x0 || cap <= 0) return 0;
  const int64_t z = clamp64(1 - c, x0, x1);    // x < z: c + x <= 0
  const int64_t f = clamp64(cap - c, z, x1);   // x >= f: c + x >= cap
  const int64_t n = f - z;
  return n * c + (z + f - 1) * n / 2 + (x1 - f) * cap;
}

// (query, key) pairs of query rows [r0, r1) with all keys: the causal pair count of DESIGN
// section 3 (q*k - q*(q-1)/2 for a task ending on the diagonal, T(T+1)/2 for a whole sequence).
CADTRAIN_HOST_DEVICE inline int64_t pairs_of_rows(int64_t r0, int64_t r1, int64_t off, int64_t nk, bool causal) {
  return causal ? sum_clamped(r0, r1, off + 1, nk) : (r1 > r0 ? (r1 - r0) * nk : 0);
}

// Pairs of key rows [j0, j1) with all nq query rows (key j is seen by clamp(nq + off - j, 0, nq)).
CADTRAIN_HOST_DEVICE inline int64_t pairs_of_keys(int64_t j0, int64_t j1, int64_t off, int64_t nq, bool causal) {
  return causal ? sum_clamped(1 - j1, 1 - j0, nq + off, nq) : (j1 > j0 ? (j1 - j0) * nq : 0);
}

// The exact merge of two partials over disjoint keys (o = wa*o_a + wb*o_b, lse as below):
// lse = max + log1p(e^(min - max)), w = e^(l - lse) <= 1, computed in double; a side with
// LSE -inf (no keys) gets weight 0. Both -inf: lse -inf, weights 0.
struct MergeWeights {
  float lse, wa, wb;
};
CADTRAIN_HOST_DEVICE inline MergeWeights merge_weights(float lse_a, float lse_b) {
  if (lse_b == -INFINITY) return {lse_a, lse_a == -INFINITY ? 0.0f : 1.0f, 0.0f};
  if (lse_a == -INFINITY) return {lse_b, 0.0f, 1.0f};
  const double mx = lse_a > lse_b ? lse_a : lse_b, mn = lse_a > lse_b ? lse_b : lse_a;
  const double lse = mx + log1p(exp(mn - mx));
  return {static_cast<float>(lse), static_cast<float>(exp(lse_a - lse)), static_cast<float>(exp(lse_b - lse))};
}

}  // namespace cadtrain::kernels::task_math
