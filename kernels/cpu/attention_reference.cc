// The CPU reference core attention: exact softmax attention with sgemm, one task per
// (sequence, kv head), tasks spread over OpenMP threads longest first. Each task runs its query
// heads and walks the query rows in blocks of kRowBlock, computing only the key columns the
// causal mask leaves (columns [0, r1) for rows [r0, r1)), so the scratch is kRowBlock x T.
// sgemm here runs inside our parallel region, where the OpenMP build of OpenBLAS stays on the
// calling thread: every task is an independent, single-threaded product.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/core_attention.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels {

namespace {

using cpu::blas_dim;
using cpu::fast_exp;
using cpu::scratch;

constexpr int kRowBlock = 128;

// OpenBLAS keeps a fixed table of work buffers, max(50, 2 * NUM_THREADS) slots (128 in Debian's
// build of NUM_THREADS 64), one per sgemm in flight; more concurrent callers abort the process
// ("too many memory regions"). The tasks' team stays within half of it.
int blas_caller_threads() { return std::min(omp_get_max_threads(), 64); }

thread_local std::vector<float> t_scores;  // [kRowBlock, T]: S, then P, then dS
thread_local std::vector<float> t_dprobs;  // [kRowBlock, T]: dP

struct Task {
  int64_t seq = 0, kv_head = 0, cost = 0;
};

// Checks shape and layout; returns the tasks, costliest first (dynamic scheduling then ends with
// the short ones, which balances threads).
std::vector<Task> plan_tasks(const AttentionShape& shape, const SequenceLayout& layout, const char* op) {
  CADTRAIN_CHECK(shape.n >= 0, "{}: n = {} is negative", op, shape.n);
  CADTRAIN_CHECK(shape.q_heads > 0 && shape.kv_heads > 0 && shape.q_heads % shape.kv_heads == 0,
                 "{}: q_heads = {} must be a positive multiple of kv_heads = {}", op, shape.q_heads, shape.kv_heads);
  CADTRAIN_CHECK(shape.head_dim > 0, "{}: head_dim = {} must be > 0", op, shape.head_dim);
  CADTRAIN_CHECK(std::isfinite(shape.softmax_scale) && shape.softmax_scale > 0,
                 "{}: softmax_scale = {} must be finite and > 0 (usually 1/sqrt(head_dim))", op, shape.softmax_scale);
  blas_dim(shape.q_heads * shape.head_dim, op, "q_heads * head_dim");
  const int64_t tokens = cpu::check_cu_seqlens(layout.cu_seqlens, layout.n_seqs, op);
  CADTRAIN_CHECK(tokens == shape.n, "{}: the sequences cover {} tokens but n = {}", op, tokens, shape.n);
  std::vector<Task> tasks;
  tasks.reserve(static_cast<size_t>(layout.n_seqs * shape.kv_heads));
  for (int64_t s = 0; s < layout.n_seqs; ++s) {
    const int64_t len = layout.cu_seqlens[s + 1] - layout.cu_seqlens[s];
    if (len == 0) continue;
    for (int64_t g = 0; g < shape.kv_heads; ++g) tasks.push_back({s, g, len * len});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& x, const Task& y) { return x.cost > y.cost; });
  return tasks;
}

// Pointers and leading dimensions of one (sequence, head) slice: row t of head h of Q is
// q + (t0 + t) * ldq + h * D.
struct Slices {
  int T = 0, D = 0, ldq = 0, ldk = 0;
  int64_t t0 = 0;
};

Slices slices_of(const AttentionShape& shape, const SequenceLayout& layout, int64_t seq) {
  Slices sl;
  sl.t0 = layout.cu_seqlens[seq];
  sl.T = static_cast<int>(layout.cu_seqlens[seq + 1] - sl.t0);
  sl.D = static_cast<int>(shape.head_dim);
  sl.ldq = static_cast<int>(shape.q_heads * shape.head_dim);
  sl.ldk = static_cast<int>(shape.kv_heads * shape.head_dim);
  return sl;
}

class ReferenceAttention final : public CoreAttention {
 public:
  void forward(float* o, float* lse, const float* q, const float* k, const float* v, const AttentionShape& shape,
               const SequenceLayout& layout) override {
    const std::vector<Task> tasks = plan_tasks(shape, layout, "attention forward");
    if (tasks.empty()) return;
    CADTRAIN_CHECK(o && lse && q && k && v, "attention forward: o, lse, q, k and v must all be non-null");
    const int64_t group = shape.q_heads / shape.kv_heads;
    const float scale = shape.softmax_scale;
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
      const Task& task = tasks[ti];
      const Slices sl = slices_of(shape, layout, task.seq);
      float* S = scratch(t_scores, static_cast<size_t>(std::min(kRowBlock, sl.T)) * sl.T);
      const float* Kg = k + sl.t0 * sl.ldk + task.kv_head * sl.D;
      const float* Vg = v + sl.t0 * sl.ldk + task.kv_head * sl.D;
      for (int64_t h = task.kv_head * group; h < (task.kv_head + 1) * group; ++h) {
        const float* Qh = q + sl.t0 * sl.ldq + h * sl.D;
        float* Oh = o + sl.t0 * sl.ldq + h * sl.D;
        for (int r0 = 0; r0 < sl.T; r0 += kRowBlock) {
          const int rows = std::min(kRowBlock, sl.T - r0), cols = r0 + rows;
          // S[rows, cols] = scale * Q[r0:r0+rows] K[0:cols]^T
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, sl.D, scale, Qh + int64_t{r0} * sl.ldq,
                      sl.ldq, Kg, sl.ldk, 0.0f, S, cols);
          for (int i = 0; i < rows; ++i) {
            float* row = S + int64_t{i} * cols;
            const int valid = r0 + i + 1;  // causal: row t sees keys 0..t
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int j = 0; j < valid; ++j) m = std::max(m, row[j]);
            const double sum = cpu::exp_in_place_sum<double>(row, valid, m);
            // P = e^(S - m) / sum, lse = m + log(sum); masked columns are 0 for the P V product.
            const auto inv = static_cast<float>(1.0 / sum);
#pragma omp simd
            for (int j = 0; j < valid; ++j) row[j] *= inv;
            std::fill(row + valid, row + cols, 0.0f);
            lse[(sl.t0 + r0 + i) * shape.q_heads + h] = static_cast<float>(static_cast<double>(m) + std::log(sum));
          }
          // O[r0:r0+rows] = P[rows, cols] V[0:cols]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, sl.D, cols, 1.0f, S, cols, Vg, sl.ldk, 0.0f,
                      Oh + int64_t{r0} * sl.ldq, sl.ldq);
        }
      }
    }
  }

  void backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                const float* o, const float* lse, const AttentionShape& shape,
                const SequenceLayout& layout) override {
    const std::vector<Task> tasks = plan_tasks(shape, layout, "attention backward");
    if (tasks.empty()) return;
    CADTRAIN_CHECK(dq && dk && dv && dout && q && k && v && o && lse,
                   "attention backward: dq, dk, dv, dout, q, k, v, o and lse must all be non-null");
    const int64_t group = shape.q_heads / shape.kv_heads;
    const float scale = shape.softmax_scale;
    // One task owns dK, dV of its kv head in its sequence and sums them over the group's query
    // heads: no two threads write the same rows.
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
    for (size_t ti = 0; ti < tasks.size(); ++ti) {
      const Task& task = tasks[ti];
      const Slices sl = slices_of(shape, layout, task.seq);
      const size_t block_elems = static_cast<size_t>(std::min(kRowBlock, sl.T)) * sl.T;
      float* S = scratch(t_scores, block_elems);
      float* dP = scratch(t_dprobs, block_elems);
      const float* Kg = k + sl.t0 * sl.ldk + task.kv_head * sl.D;
      const float* Vg = v + sl.t0 * sl.ldk + task.kv_head * sl.D;
      float* dKg = dk + sl.t0 * sl.ldk + task.kv_head * sl.D;
      float* dVg = dv + sl.t0 * sl.ldk + task.kv_head * sl.D;
      for (int t = 0; t < sl.T; ++t) {
        std::memset(dKg + int64_t{t} * sl.ldk, 0, sizeof(float) * sl.D);
        std::memset(dVg + int64_t{t} * sl.ldk, 0, sizeof(float) * sl.D);
      }
      for (int64_t h = task.kv_head * group; h < (task.kv_head + 1) * group; ++h) {
        const int64_t head_off = sl.t0 * sl.ldq + h * sl.D;
        const float* Qh = q + head_off;
        const float* Oh = o + head_off;
        const float* dOh = dout + head_off;
        float* dQh = dq + head_off;
        for (int r0 = 0; r0 < sl.T; r0 += kRowBlock) {
          const int rows = std::min(kRowBlock, sl.T - r0), cols = r0 + rows;
          const int64_t blk = int64_t{r0} * sl.ldq;
          // Recompute P = exp(scale * Q K^T - lse) from the forward's lse.
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, sl.D, scale, Qh + blk, sl.ldq, Kg, sl.ldk,
                      0.0f, S, cols);
          for (int i = 0; i < rows; ++i) {
            float* row = S + int64_t{i} * cols;
            const int valid = r0 + i + 1;
            const float l = lse[(sl.t0 + r0 + i) * shape.q_heads + h];
#pragma omp simd
            for (int j = 0; j < valid; ++j) row[j] = fast_exp(row[j] - l);
            std::fill(row + valid, row + cols, 0.0f);
          }
          // dV[0:cols] += P^T dO[r0:r0+rows]
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, sl.D, rows, 1.0f, S, cols, dOh + blk, sl.ldq,
                      1.0f, dVg, sl.ldk);
          // dP[rows, cols] = dO[r0:r0+rows] V[0:cols]^T
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, sl.D, 1.0f, dOh + blk, sl.ldq, Vg, sl.ldk,
                      0.0f, dP, cols);
          for (int i = 0; i < rows; ++i) {
            float* row = S + int64_t{i} * cols;
            const float* dprow = dP + int64_t{i} * cols;
            const float* o_i = Oh + blk + int64_t{i} * sl.ldq;
            const float* do_i = dOh + blk + int64_t{i} * sl.ldq;
            // D_i = sum_d dO_i O_i (= sum_j P_ij dP_ij); dS = P (dP - D_i), in place of P
            double di = 0;
#pragma omp simd reduction(+ : di)
            for (int d = 0; d < sl.D; ++d) di += static_cast<double>(do_i[d]) * o_i[d];
            const auto df = static_cast<float>(di);
            const int valid = r0 + i + 1;
#pragma omp simd
            for (int j = 0; j < valid; ++j) row[j] *= dprow[j] - df;
          }
          // dQ[r0:r0+rows] = scale dS K[0:cols]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, sl.D, cols, scale, S, cols, Kg, sl.ldk, 0.0f,
                      dQh + blk, sl.ldq);
          // dK[0:cols] += scale dS^T Q[r0:r0+rows]
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, sl.D, rows, scale, S, cols, Qh + blk, sl.ldq,
                      1.0f, dKg, sl.ldk);
        }
      }
    }
  }
};

}  // namespace

std::unique_ptr<CoreAttention> make_local_reference_attention() { return std::make_unique<ReferenceAttention>(); }

}  // namespace cadtrain::kernels
