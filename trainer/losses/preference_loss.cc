// Preference losses on sequence log-probabilities (preference_loss.h).
#include "trainer/losses/preference_loss.h"

#include <cmath>

#include "common/error.h"

namespace cadtrain::trainer {
namespace {

double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }

// -log sigmoid(u) = softplus(-u), stable for large |u|.
double neg_log_sigmoid(double u) { return u >= 0 ? std::log1p(std::exp(-u)) : -u + std::log1p(std::exp(u)); }

void check_length(int64_t len, const char* what) {
  if (len < 1) fail("preference loss: {} response has {} tokens (needs >= 1)", what, len);
}

}  // namespace

LnPreferenceResult ln_preference_loss(double logp_chosen, double ref_chosen, int64_t len_chosen,
                                      double logp_rejected, double ref_rejected, int64_t len_rejected,
                                      const LnPreferenceOptions& o) {
  check_length(len_chosen, "chosen");
  check_length(len_rejected, "rejected");
  const double inv_w = 1.0 / static_cast<double>(len_chosen);
  const double inv_l = 1.0 / static_cast<double>(len_rejected);
  const double r_w = (logp_chosen - ref_chosen) * inv_w;
  const double r_l = (logp_rejected - ref_rejected) * inv_l;
  LnPreferenceResult out;
  out.reward_chosen = o.beta * r_w;
  out.reward_rejected = o.beta * r_l;
  double d_rw = 0, d_rl = 0;
  if (o.dpo_term) {
    const double u = o.beta * (r_w - r_l) - o.margin;
    out.loss += neg_log_sigmoid(u);
    const double g = sigmoid(u) - 1.0;  // d(-log sigmoid(u))/du
    d_rw += o.beta * g;
    d_rl -= o.beta * g;
  }
  if (o.delta != 0) {
    const double sw = sigmoid(o.beta * r_w);
    const double sl = sigmoid(o.beta * r_l);
    out.loss += o.delta * ((1.0 - sw) + sl);
    d_rw -= o.delta * o.beta * sw * (1.0 - sw);
    d_rl += o.delta * o.beta * sl * (1.0 - sl);
  }
  out.d_logp_chosen = d_rw * inv_w;
  out.d_logp_rejected = d_rl * inv_l;
  return out;
}

LogoResult logo_loss(double logp_chosen, int64_t len_chosen, std::span<const double> logp_rejected,
                     std::span<const int64_t> len_rejected, const LogoOptions& o) {
  check_length(len_chosen, "chosen");
  const size_t m = logp_rejected.size();
  if (m == 0 || len_rejected.size() != m) {
    fail("LOGO loss: {} rejected log-probabilities and {} lengths (need M >= 1 of each)", m, len_rejected.size());
  }
  const double inv_w = 1.0 / static_cast<double>(len_chosen);
  LogoResult out;
  out.reward_chosen = o.beta * logp_chosen * inv_w;
  double rejected = 0;
  for (size_t j = 0; j < m; ++j) {
    check_length(len_rejected[j], "rejected");
    rejected += logp_rejected[j] / static_cast<double>(len_rejected[j]);
  }
  out.reward_rejected = o.beta * rejected / static_cast<double>(m);
  const double u = out.reward_chosen - out.reward_rejected - o.gamma;
  out.sft = -logp_chosen * inv_w;
  out.loss = neg_log_sigmoid(u) + o.lambda * out.sft;
  const double g = sigmoid(u) - 1.0;
  out.d_logp_chosen = g * o.beta * inv_w - o.lambda * inv_w;
  out.d_logp_rejected.resize(m);
  for (size_t j = 0; j < m; ++j) {
    out.d_logp_rejected[j] = -g * o.beta / (static_cast<double>(m) * static_cast<double>(len_rejected[j]));
  }
  return out;
}

}  // namespace cadtrain::trainer
