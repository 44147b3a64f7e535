// Tempered decoupled top-K distillation, one row (formulas in cpu_topk_distill.h).
#include "kernels/cpu/cpu_topk_distill.h"

#include <algorithm>
#include <cmath>

namespace cadtrain::kernels::cpu {
namespace {

// log sum_k e^(x_k / t) and, into w, softmax(x / t).
double log_softmax_into(const double* x, int64_t k, double t, double* w) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < k; ++i) mx = std::max(mx, x[i] / t);
  double s = 0;
  for (int64_t i = 0; i < k; ++i) {
    w[i] = std::exp(x[i] / t - mx);
    s += w[i];
  }
  for (int64_t i = 0; i < k; ++i) w[i] /= s;
  return mx + std::log(s);
}

// log(1 - e^x) for x <= 0, accurate at both ends (Maechler's log1mexp); -inf at x = 0.
double log1mexp(double x) {
  if (x >= 0) return -INFINITY;
  return x > -0.693147180559945 ? std::log(-std::expm1(x)) : std::log1p(-std::exp(x));
}

}  // namespace

TopKDistillRow topk_distill_row(const float* zk, const float* t_logp, int64_t k, float m, double sum,
                                bool covers_vocab, float temperature, bool tau_squared, double* dk,
                                double* scratch) {
  const double tau = temperature;
  const double s = tau_squared ? tau * tau : 1.0;
  double* x = scratch;      // [K] inputs as doubles
  double* w = scratch + k;  // [K] a softmax

  // Student: log P_S and q = softmax_K(z_K).
  for (int64_t i = 0; i < k; ++i) x[i] = zk[i];
  const double lse_v = static_cast<double>(m) + std::log(sum);
  const double log_ps = std::min(0.0, log_softmax_into(x, k, 1.0, dk) - lse_v);  // dk holds q for now
  const double ps = std::exp(log_ps);

  // Teacher: log P_T.
  double t_max = -INFINITY;
  for (int64_t i = 0; i < k; ++i) t_max = std::max(t_max, static_cast<double>(t_logp[i]));
  double t_sum = 0;
  for (int64_t i = 0; i < k; ++i) t_sum += std::exp(t_logp[i] - t_max);
  const double log_pt = std::min(0.0, t_max + std::log(t_sum));  // stored values may round above 1
  const double pt = std::exp(log_pt);

  // B, with 0 log 0 = 0; when K covers the vocabulary both outside masses are 0 by definition.
  double b_term = pt * (log_pt - log_ps);
  double out_coef = 0;
  if (!covers_vocab) {
    const double log_1mpt = log1mexp(log_pt);
    const double log_1mps = log1mexp(log_ps);
    const double one_minus_pt = std::exp(log_1mpt);
    if (one_minus_pt > 0) b_term += one_minus_pt * (log_1mpt - log_1mps);
    const double one_minus_ps = std::exp(log_1mps);
    out_coef = one_minus_ps > 0 ? (pt - ps) / one_minus_ps : 0.0;
  }
  for (int64_t i = 0; i < k; ++i) dk[i] *= (ps - pt);  // q_j (P_S - P_T)

  // C over the same K entries at temperature tau: a = softmax_K(log p_T / tau) into w,
  // b = softmax_K(z_K / tau) into x.
  for (int64_t i = 0; i < k; ++i) x[i] = t_logp[i];
  const double lse_a = log_softmax_into(x, k, tau, w);
  for (int64_t i = 0; i < k; ++i) x[i] = zk[i];
  const double lse_b = log_softmax_into(x, k, tau, x);
  double c_term = 0;
  for (int64_t i = 0; i < k; ++i) {
    const double log_a = t_logp[i] / tau - lse_a;
    const double log_b = zk[i] / tau - lse_b;
    if (w[i] > 0) c_term += w[i] * (log_a - log_b);
  }
  const double c_scale = s * pt / tau;
  for (int64_t i = 0; i < k; ++i) dk[i] += c_scale * (x[i] - w[i]);

  TopKDistillRow row;
  row.loss = b_term + s * pt * c_term;
  row.out_coef = out_coef;
  return row;
}

}  // namespace cadtrain::kernels::cpu
