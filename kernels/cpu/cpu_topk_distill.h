// One row of the tempered decoupled top-K distillation loss (DESIGN section 7), for the fused LM
// head: the caller owns the row's logits and their exponentials, this computes L_KD and its
// gradient from the K gathered logits and the row's softmax normalizer alone, so the vocabulary-
// wide part of the gradient folds into the cross-entropy's one pass over the row.
//
//   P_T = sum_K p_T, P_S = sum_K p_S (p_S the student's full-vocabulary softmax)
//   B = P_T log(P_T/P_S) + (1-P_T) log((1-P_T)/(1-P_S))        (untempered mass term)
//   C = sum_K a_k (log a_k - log b_k), a = softmax_K(log p_T / tau), b = softmax_K(z_K / tau)
//   L_KD = B + s P_T C, s = tau^2 when tau_squared else 1
//   dL/dz_j = q_j (P_S - P_T) + s P_T (b_j - a_j) / tau  for j in K  (q = softmax_K(z_K): p_j/P_S)
//   dL/dz_j = p_j (P_T - P_S) / (1 - P_S)                  otherwise
// Log-space throughout (log P_S = LSE_K(z) - LSE_V(z); log1p), so a student that puts almost no
// mass on the teacher's K tokens, or almost all of it, stays finite.
#pragma once

#include <cstdint>

namespace cadtrain::kernels::cpu {

struct TopKDistillRow {
  double loss = 0;       // L_KD of the row
  double out_coef = 0;   // dL_KD/dz_j = out_coef * p_j for every j outside K
};

// zk[K]: the student's logits at the teacher's ids; t_logp[K]: the teacher's log-probabilities
// (normalized over the full vocabulary); m, sum: the row's logit maximum and sum_j e^(z_j - m)
// over the whole vocabulary; covers_vocab: K holds every token (then no mass lies outside K).
// Writes dk[K] = dL_KD/dz at the K ids (the complete gradient there). scratch: 2K doubles.
TopKDistillRow topk_distill_row(const float* zk, const float* t_logp, int64_t k, float m, double sum,
                                bool covers_vocab, float temperature, bool tau_squared, double* dk,
                                double* scratch);

}  // namespace cadtrain::kernels::cpu
