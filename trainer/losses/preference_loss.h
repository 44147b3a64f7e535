// Sequence-level preference losses (DESIGN section 7), on per-response log-probability sums: the
// model computes sum_t log pi(y_t | x, y_<t) per response (and its gradient flows back through
// d loss / d logp), these functions do the rest. Scalars in double.
//
// Length-normalized DPO / APO-zero, with r(y) = (log pi(y|x) - log pi_ref(y|x)) / |y|:
//   L = dpo * -log sigmoid(beta (r_w - r_l) - margin) + delta [(1 - sigmoid(beta r_w)) + sigmoid(beta r_l)]
//   dpo = 1, delta = 0: LN-DPO; dpo = 0, delta = 1: LN-APO-zero; both: their combination.
// LOGO (reference-free, M rejected responses):
//   L = -log sigmoid(beta/|y_w| log pi(y_w) - beta/M sum_j log pi(y_l_j)/|y_l_j| - gamma)
//       + lambda * NLL(y_w),  NLL(y_w) = -log pi(y_w) / |y_w| (mean per-token NLL of the chosen response)
//   M = 1, lambda = 0 is SimPO.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace cadtrain::trainer {

struct LnPreferenceOptions {
  double beta = 0.1;
  double margin = 0;     // m
  double delta = 0;      // weight of the APO-zero term
  bool dpo_term = true;  // false with delta = 1: LN-APO-zero alone
};

struct LnPreferenceResult {
  double loss = 0;
  double d_logp_chosen = 0;    // dL / d log pi(y_w|x)
  double d_logp_rejected = 0;  // dL / d log pi(y_l|x)
  double reward_chosen = 0;    // beta r_w
  double reward_rejected = 0;  // beta r_l
};

// logp_*: policy log-probability sums; ref_*: the reference's; len_*: response tokens (>= 1).
LnPreferenceResult ln_preference_loss(double logp_chosen, double ref_chosen, int64_t len_chosen,
                                      double logp_rejected, double ref_rejected, int64_t len_rejected,
                                      const LnPreferenceOptions& options);

struct LogoOptions {
  double beta = 10;
  double gamma = 3;
  double lambda = 0.1;  // weight of the chosen response's NLL
};

struct LogoResult {
  double loss = 0;
  double sft = 0;                        // NLL(y_w), the SFT term before lambda
  double d_logp_chosen = 0;
  std::vector<double> d_logp_rejected;   // [M]
  double reward_chosen = 0;              // beta/|y_w| log pi(y_w)
  double reward_rejected = 0;            // beta/M sum_j log pi(y_l_j)/|y_l_j|
};

LogoResult logo_loss(double logp_chosen, int64_t len_chosen, std::span<const double> logp_rejected,
                     std::span<const int64_t> len_rejected, const LogoOptions& options);

}  // namespace cadtrain::trainer
