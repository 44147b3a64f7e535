// Fused LM head + cross-entropy, in blocks of rows: per block, logits = h_blk W^T (sgemm), a
// stable log-softmax per row, and for training dlogits in place of the logits, then
// dh_blk = dlogits W and dw += dlogits^T h_blk (sgemm). Only one block's [rows, V] logits exist.
// With a distillation term, each row also gathers its K teacher-id logits before the softmax and
// the KD gradient folds into the same pass (cpu_topk_distill.h), so KD costs O(K) per row beyond
// cross-entropy.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_topk_distill.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels::cpu {

namespace {

thread_local std::vector<float> t_logits;      // [block rows, V]
thread_local std::vector<double> t_row_terms;  // [block rows] mask * loss

struct RowOut {
  double weighted_loss = 0;  // mask * loss
  float loss = 0;            // unweighted, 0 when the mask is 0
  uint32_t argmax = 0;
  double weighted_kd = 0;    // mask * L_KD
  float kd = 0;              // unweighted L_KD, 0 when the mask is 0
};

// One row's distillation inputs (ids and logprobs point at the row).
struct RowDistill {
  const TopKDistillArgs* args = nullptr;
  const int32_t* ids = nullptr;
  const float* logprobs = nullptr;
  bool covers_vocab = false;
};

thread_local std::vector<float> t_zk;       // [K] the row's logits at the teacher's ids
thread_local std::vector<double> t_kd;      // [3K] dL_KD/dz at the ids, then workspace

// One row z[V] of logits. Computes the loss and argmax; with `grad`, replaces z by
//   dlogits_j = g (softmax(z)_j - [j == target]) + g lambda dL_KD/dz_j,  g = grad_scale * mask.
RowOut softmax_row(float* z, int64_t v, uint32_t target, float mask, float grad_scale, bool want_argmax, bool grad,
                   const RowDistill& kd) {
  RowOut out;
  if (mask == 0.0f && !want_argmax) {
    if (grad) std::fill(z, z + v, 0.0f);
    return out;
  }
  const float m = max_of(z, v);
  if (want_argmax) {
    int64_t j = 0;  // the first maximum, as torch.argmax; 0 when the row holds a NaN and no maximum
    while (j < v && z[j] != m) ++j;
    out.argmax = j < v ? static_cast<uint32_t>(j) : 0;
  }
  if (mask == 0.0f) {
    if (grad) std::fill(z, z + v, 0.0f);
    return out;
  }
  const float z_target = z[target];
  const int64_t k = kd.args != nullptr ? kd.args->k : 0;
  float* zk = nullptr;
  if (k > 0) {
    zk = scratch(t_zk, static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) zk[i] = z[kd.ids[i]];
  }
  // sum_j e^(z_j - m) with float exps accumulated in double; keep the exps when training.
  double sum = 0;
  if (grad) {
    sum = exp_in_place_sum<double>(z, v, m);
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < v; ++j) sum += fast_exp(z[j] - m);
  }
  // loss = lse - z_target, lse = m + log(sum)
  const double loss = static_cast<double>(m) + std::log(sum) - static_cast<double>(z_target);
  out.loss = static_cast<float>(loss);
  out.weighted_loss = static_cast<double>(mask) * loss;
  TopKDistillRow kd_row;
  double* dk = nullptr;
  if (k > 0) {
    dk = scratch(t_kd, static_cast<size_t>(3 * k));
    kd_row = topk_distill_row(zk, kd.logprobs, k, m, sum, kd.covers_vocab, kd.args->temperature,
                              kd.args->tau_squared, dk, dk + k);
    out.kd = static_cast<float>(kd_row.loss);
    out.weighted_kd = static_cast<double>(mask) * kd_row.loss;
  }
  if (grad) {
    const double g = static_cast<double>(grad_scale) * mask;
    const double gk = k > 0 ? g * kd.args->weight : 0.0;
    // Outside K the KD gradient is out_coef * p_j: one scale for the whole row.
    const auto coef = static_cast<float>((g + gk * kd_row.out_coef) / sum);
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) z[j] *= coef;
    const double lse = static_cast<double>(m) + std::log(sum);
    for (int64_t i = 0; i < k; ++i) {  // at the K ids the KD gradient is complete in dk
      const double p = std::exp(static_cast<double>(zk[i]) - lse);
      z[kd.ids[i]] = static_cast<float>(g * p + gk * dk[i]);
    }
    z[target] -= static_cast<float>(g);
  }
  return out;
}

}  // namespace

LmHeadLossResult CpuBackend::lm_head_cross_entropy(const LmHeadLossArgs& a) {
  const char* op = "lm_head_cross_entropy";
  const int N = blas_dim(a.n, op, "n");
  const int C = blas_dim(a.c, op, "c");
  const int V = blas_dim(a.v, op, "v");
  CADTRAIN_CHECK(C > 0 && V > 0, "{}: c = {} and v = {} must be > 0", op, C, V);
  LmHeadLossResult result;
  if (N == 0) return result;
  check_ptr(a.h, true, op, "h");
  check_ptr(a.w, true, op, "w");
  check_ptr(a.targets, true, op, "targets");
  const bool grad = a.dh != nullptr || a.dw != nullptr;
  auto mask_of = [&](int64_t i) { return a.mask != nullptr ? a.mask[i] : 1.0f; };

  // Targets are checked before anything is written, so a bad batch leaves dw as it was. Rows with
  // mask 0 are not read, so their targets may hold any padding value.
  for (int64_t i = 0; i < N; ++i) {
    const float mi = mask_of(i);
    if (mi != 0.0f && a.targets[i] >= static_cast<uint32_t>(V)) {
      fail("{}: row {} has target id {}, outside the vocabulary of {} tokens", op, i, a.targets[i], V);
    }
    result.weight_sum += mi;
  }
  const TopKDistillArgs* kd = a.distill;
  if (kd != nullptr) {
    CADTRAIN_CHECK(kd->k >= 1 && kd->k <= V, "{}: distill k = {} must be in [1, v = {}]", op, kd->k, V);
    CADTRAIN_CHECK(kd->temperature > 0 && std::isfinite(kd->temperature), "{}: distill temperature {} must be > 0",
                   op, kd->temperature);
    check_ptr(kd->ids, true, op, "distill.ids");
    check_ptr(kd->logprobs, true, op, "distill.logprobs");
    for (int64_t i = 0; i < N; ++i) {
      if (mask_of(i) == 0.0f) continue;
      for (int64_t j = 0; j < kd->k; ++j) {
        const int32_t id = kd->ids[i * kd->k + j];
        if (id < 0 || id >= V) fail("{}: row {} has teacher id {}, outside the vocabulary of {} tokens", op, i, id, V);
      }
    }
  }
  auto row_distill = [&](int64_t row) {
    RowDistill d;
    if (kd == nullptr) return d;
    d.args = kd;
    d.ids = kd->ids + row * kd->k;
    d.logprobs = kd->logprobs + row * kd->k;
    d.covers_vocab = kd->k == V;
    return d;
  };

  const auto cap_rows = static_cast<int64_t>(options_.lm_head_block_bytes / (sizeof(float) * static_cast<size_t>(V)));
  const int block = static_cast<int>(std::clamp<int64_t>(std::min(options_.lm_head_block_rows, cap_rows), 1, N));
  float* logits = scratch(t_logits, static_cast<size_t>(block) * V);
  double* terms = scratch(t_row_terms, static_cast<size_t>(2 * block));  // CE, then KD per row
  const bool want_argmax = a.row_argmax != nullptr;

  for (int r0 = 0; r0 < N; r0 += block) {
    const int rows = std::min(block, N - r0);
    const float* h_blk = a.h + static_cast<int64_t>(r0) * C;
    bool any_weight = false;
    for (int i = 0; i < rows; ++i) any_weight = any_weight || mask_of(r0 + i) != 0.0f;
    if (any_weight || want_argmax) {
      // logits[rows, V] = h_blk[rows, C] W[V, C]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, V, C, 1.0f, h_blk, C, a.w, C, 0.0f, logits, V);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < rows; ++i) {
        const int64_t row = r0 + i;
        const float mi = mask_of(row);
        const RowOut out = softmax_row(logits + static_cast<int64_t>(i) * V, V, mi != 0.0f ? a.targets[row] : 0, mi,
                                       a.grad_scale, want_argmax, grad && any_weight, row_distill(row));
        terms[i] = out.weighted_loss;
        terms[block + i] = out.weighted_kd;
        if (a.row_loss != nullptr) a.row_loss[row] = out.loss;
        if (want_argmax) a.row_argmax[row] = out.argmax;
        if (kd != nullptr && kd->row_kd != nullptr) kd->row_kd[row] = out.kd;
      }
      for (int i = 0; i < rows; ++i) {  // in row order: deterministic
        result.loss_sum += terms[i];
        result.kd_sum += terms[block + i];
      }
    } else {
      if (a.row_loss != nullptr) std::fill(a.row_loss + r0, a.row_loss + r0 + rows, 0.0f);
      if (kd != nullptr && kd->row_kd != nullptr) std::fill(kd->row_kd + r0, kd->row_kd + r0 + rows, 0.0f);
    }
    if (!grad) continue;
    if (!any_weight) {  // every dlogit is 0: dh_blk = 0 and dw is unchanged
      if (a.dh != nullptr) zero(a.dh + static_cast<int64_t>(r0) * C, static_cast<size_t>(rows) * C);
      continue;
    }
    // dh_blk[rows, C] = dlogits[rows, V] W[V, C]
    if (a.dh != nullptr) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, C, V, 1.0f, logits, V, a.w, C, 0.0f,
                  a.dh + static_cast<int64_t>(r0) * C, C);
    }
    // dw[V, C] += dlogits[rows, V]^T h_blk[rows, C]
    if (a.dw != nullptr) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, rows, 1.0f, logits, V, h_blk, C, 1.0f, a.dw, C);
    }
  }
  return result;
}

}  // namespace cadtrain::kernels::cpu
