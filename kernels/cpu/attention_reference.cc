// The CPU reference core attention: exact softmax attention with sgemm over the same tasks as the
// fused kernel (sequence_tasks, kernels/attention_tasks.h), one work item per (task, kv head),
// spread over OpenMP threads costliest first. Each item runs its query heads and walks the query
// rows in blocks of kRowBlock, computing only the key columns the causal mask leaves (columns
// [0, visible(last row of the block))), so the scratch is kRowBlock x task keys.
// sgemm here runs inside our parallel region, where the OpenMP build of OpenBLAS stays on the
// calling thread: every item is an independent, single-threaded product.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/core_attention.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_util.h"
#include "kernels/local_attention_plan.h"

namespace cadtrain::kernels {

namespace {

using cpu::blas_dim;
using cpu::fast_exp;
using cpu::scratch;

constexpr int kRowBlock = 128;

// OpenBLAS keeps a fixed table of work buffers, max(50, 2 * NUM_THREADS) slots (128 in Debian's
// build of NUM_THREADS 64), one per sgemm in flight; more concurrent callers abort the process
// ("too many memory regions"). The items' team stays within half of it.
int blas_caller_threads() { return std::min(omp_get_max_threads(), 64); }

thread_local std::vector<float> t_scores;  // [kRowBlock, keys]: S, then P, then dS
thread_local std::vector<float> t_dprobs;  // [kRowBlock, keys]: dP

struct Item {
  size_t task = 0;
  int64_t kv_head = 0, cost = 0;
};

// Checks the shape; returns the part's (task, kv head) items, costliest first (dynamic scheduling
// then ends with the short ones, which balances threads).
std::vector<Item> plan_items(const LocalAttentionPlan& plan, size_t part, const char* op) {
  const AttentionShape& shape = plan.shape;
  CADTRAIN_CHECK(shape.q_heads > 0 && shape.kv_heads > 0 && shape.q_heads % shape.kv_heads == 0,
                 "{}: q_heads = {} must be a positive multiple of kv_heads = {}", op, shape.q_heads, shape.kv_heads);
  CADTRAIN_CHECK(shape.head_dim > 0, "{}: head_dim = {} must be > 0", op, shape.head_dim);
  CADTRAIN_CHECK(std::isfinite(shape.softmax_scale) && shape.softmax_scale > 0,
                 "{}: softmax_scale = {} must be finite and > 0 (usually 1/sqrt(head_dim))", op, shape.softmax_scale);
  blas_dim(shape.q_heads * shape.head_dim, op, "q_heads * head_dim");
  std::vector<Item> items;
  const std::vector<AttentionTask>& tasks = plan.tasks[part];
  for (size_t t = 0; t < tasks.size(); ++t) {
    if (tasks[t].q1 <= tasks[t].q0) continue;
    blas_dim(tasks[t].k1 - tasks[t].k0, op, "task key rows");
    const auto cost = static_cast<int64_t>(task_pairs(tasks[t]));
    for (int64_t g = 0; g < shape.kv_heads; ++g) items.push_back({t, g, cost});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.cost > y.cost; });
  return items;
}

// One task's geometry in the units sgemm takes: query row i of the task (absolute row q0 + i)
// sees key rows k0 .. k0 + visible(i) - 1.
struct Slices {
  int nq = 0, nk = 0, D = 0, ldq = 0, ldk = 0;
  int64_t q0 = 0, k0 = 0, off = 0;
  bool causal = true;
  int visible(int i) const { return static_cast<int>(task_math::visible_keys(i, off, nk, causal)); }
};

Slices slices_of(const AttentionShape& shape, const AttentionTask& t) {
  Slices sl;
  sl.nq = static_cast<int>(t.q1 - t.q0);
  sl.nk = static_cast<int>(t.k1 - t.k0);
  sl.D = static_cast<int>(shape.head_dim);
  sl.ldq = static_cast<int>(shape.q_heads * shape.head_dim);
  sl.ldk = static_cast<int>(shape.kv_heads * shape.head_dim);
  sl.q0 = t.q0;
  sl.k0 = t.k0;
  sl.off = t.q_pos0 - t.k_pos0;
  sl.causal = t.causal;
  return sl;
}

class ReferenceAttention final : public CoreAttention {
 public:
  std::unique_ptr<AttentionPlan> prepare(const AttentionShape& shape, const SequenceLayout& layout,
                                         std::span<const RowRange> parts) override {
    return make_local_plan(shape, layout, parts, "reference attention prepare");
  }

  std::unique_ptr<AttentionHandle> forward(int /*layer*/, AttentionPlan& plan_base, size_t part,
                                           const AttentionIO& io) override {
    const LocalAttentionPlan& plan = local_plan(plan_base, part, "attention forward");
    const std::vector<Item> items = plan_items(plan, part, "attention forward");
    if (items.empty()) return completed_attention();
    CADTRAIN_CHECK(io.o && io.lse && io.q && io.k && io.v, "attention forward: o, lse, q, k and v must all be non-null");
    const AttentionShape& shape = plan.shape;
    const int64_t group = shape.q_heads / shape.kv_heads;
    const float scale = shape.softmax_scale;
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
    for (size_t it = 0; it < items.size(); ++it) {
      const Item& item = items[it];
      const Slices sl = slices_of(shape, plan.tasks[part][item.task]);
      float* S = scratch(t_scores, static_cast<size_t>(std::min(kRowBlock, sl.nq)) * std::max(sl.nk, 1));
      const float* Kg = io.k + sl.k0 * sl.ldk + item.kv_head * sl.D;
      const float* Vg = io.v + sl.k0 * sl.ldk + item.kv_head * sl.D;
      for (int64_t h = item.kv_head * group; h < (item.kv_head + 1) * group; ++h) {
        const float* Qh = io.q + sl.q0 * sl.ldq + h * sl.D;
        float* Oh = io.o + sl.q0 * sl.ldq + h * sl.D;
        for (int r0 = 0; r0 < sl.nq; r0 += kRowBlock) {
          const int rows = std::min(kRowBlock, sl.nq - r0), cols = sl.visible(r0 + rows - 1);
          if (cols > 0) {
            // S[rows, cols] = scale * Q[r0:r0+rows] K[0:cols]^T
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, sl.D, scale, Qh + int64_t{r0} * sl.ldq,
                        sl.ldq, Kg, sl.ldk, 0.0f, S, cols);
          }
          for (int i = 0; i < rows; ++i) {
            float* row = S + int64_t{i} * cols;
            const int valid = sl.visible(r0 + i);
            float& lse = io.lse[(sl.q0 + r0 + i) * shape.q_heads + h];
            if (valid == 0) {  // sees no key: O = 0 (P row 0), LSE = -inf
              std::fill(row, row + cols, 0.0f);
              lse = -INFINITY;
              continue;
            }
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int j = 0; j < valid; ++j) m = std::max(m, row[j]);
            const double sum = cpu::exp_in_place_sum<double>(row, valid, m);
            // P = e^(S - m) / sum, lse = m + log(sum); masked columns are 0 for the P V product.
            const auto inv = static_cast<float>(1.0 / sum);
#pragma omp simd
            for (int j = 0; j < valid; ++j) row[j] *= inv;
            std::fill(row + valid, row + cols, 0.0f);
            lse = static_cast<float>(static_cast<double>(m) + std::log(sum));
          }
          float* Ob = Oh + int64_t{r0} * sl.ldq;
          if (cols == 0) {
            for (int i = 0; i < rows; ++i) std::fill(Ob + int64_t{i} * sl.ldq, Ob + int64_t{i} * sl.ldq + sl.D, 0.0f);
            continue;
          }
          // O[r0:r0+rows] = P[rows, cols] V[0:cols]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, sl.D, cols, 1.0f, S, cols, Vg, sl.ldk, 0.0f, Ob,
                      sl.ldq);
        }
      }
    }
    return completed_attention();
  }

  std::unique_ptr<AttentionHandle> backward(int /*layer*/, AttentionPlan& plan_base, size_t part,
                                            AttentionHandle& /*forward*/, const AttentionIO& io,
                                            const AttentionGrads& grads) override {
    const LocalAttentionPlan& plan = local_plan(plan_base, part, "attention backward");
    const std::vector<Item> items = plan_items(plan, part, "attention backward");
    if (items.empty()) return completed_attention();
    CADTRAIN_CHECK(grads.dq && grads.dk && grads.dv && grads.dout && io.q && io.k && io.v && io.o && io.lse,
                   "attention backward: dq, dk, dv, dout, q, k, v, o and lse must all be non-null");
    const AttentionShape& shape = plan.shape;
    const int64_t group = shape.q_heads / shape.kv_heads;
    const float scale = shape.softmax_scale;
    // One item owns dK, dV of its kv head in its task's key rows (tasks of a part share no key
    // rows) and sums them over the group's query heads: no two threads write the same rows.
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
    for (size_t it = 0; it < items.size(); ++it) {
      const Item& item = items[it];
      const Slices sl = slices_of(shape, plan.tasks[part][item.task]);
      const size_t block_elems = static_cast<size_t>(std::min(kRowBlock, sl.nq)) * std::max(sl.nk, 1);
      float* S = scratch(t_scores, block_elems);
      float* dP = scratch(t_dprobs, block_elems);
      const float* Kg = io.k + sl.k0 * sl.ldk + item.kv_head * sl.D;
      const float* Vg = io.v + sl.k0 * sl.ldk + item.kv_head * sl.D;
      float* dKg = grads.dk + sl.k0 * sl.ldk + item.kv_head * sl.D;
      float* dVg = grads.dv + sl.k0 * sl.ldk + item.kv_head * sl.D;
      for (int64_t h = item.kv_head * group; h < (item.kv_head + 1) * group; ++h) {
        const float* Qh = io.q + sl.q0 * sl.ldq + h * sl.D;
        const float* Oh = io.o + sl.q0 * sl.ldq + h * sl.D;
        const float* dOh = grads.dout + sl.q0 * sl.ldq + h * sl.D;
        float* dQh = grads.dq + sl.q0 * sl.ldq + h * sl.D;
        for (int r0 = 0; r0 < sl.nq; r0 += kRowBlock) {
          const int rows = std::min(kRowBlock, sl.nq - r0), cols = sl.visible(r0 + rows - 1);
          const int64_t blk = int64_t{r0} * sl.ldq;
          if (cols == 0) {  // no row of the block sees a key: dQ = 0, nothing for dK, dV
            for (int i = 0; i < rows; ++i) std::fill(dQh + blk + int64_t{i} * sl.ldq, dQh + blk + int64_t{i} * sl.ldq + sl.D, 0.0f);
            continue;
          }
          // Recompute P = exp(scale * Q K^T - lse) from the forward's lse.
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, sl.D, scale, Qh + blk, sl.ldq, Kg, sl.ldk,
                      0.0f, S, cols);
          for (int i = 0; i < rows; ++i) {
            float* row = S + int64_t{i} * cols;
            const int valid = sl.visible(r0 + i);
            const float l = io.lse[(sl.q0 + r0 + i) * shape.q_heads + h];
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
            const int valid = sl.visible(r0 + i);
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
    return completed_attention();
  }
};

}  // namespace

std::unique_ptr<CoreAttention> make_local_reference_attention() { return std::make_unique<ReferenceAttention>(); }

}  // namespace cadtrain::kernels
