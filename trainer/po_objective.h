// The preference objective of one micro-batch: from each response's policy (and reference)
// log-probability to the loss, the per-row weights that turn the model's masked cross-entropy
// backward into the gradient of that loss, and the metrics users watch.
//
// Gradient: with logp(y) = -sum_{rows of y} CE_row, dL/dtheta = sum_rows w_row dCE_row/dtheta with
// w_row = -dL/dlogp(y) for the response y the row predicts, so running the model's fused
// cross-entropy backward with loss_mask = w gives exactly dL/dtheta (trainer/po_train.cc).
//
// With M rejected responses, the LN losses average the M (chosen, rejected_j) pairs; LOGO uses
// all M in one term (DESIGN section 7). Accuracy is the share of pairs whose chosen reward is
// above the rejected one's (LN: beta r(y); LOGO: beta/|y| log pi(y)).
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/losses/preference_loss.h"
#include "trainer/po_batch.h"

namespace cadtrain::trainer {

struct PoObjective {
  bool logo = false;          // LOGO (reference-free) instead of the LN DPO / APO-zero family
  LnPreferenceOptions ln;
  LogoOptions logo_options;
};

// Sums over examples (divide by `examples` for means; accuracy by `pairs`).
struct PoSums {
  double examples = 0, pairs = 0;
  double loss = 0, reward_chosen = 0, reward_rejected = 0, correct = 0, sft = 0;
  void add(const PoSums& o);
};

// Reference log-probabilities: policy-shaped, or nullptr for LOGO.
struct PoReference {
  const std::vector<double>* chosen = nullptr;
  const std::vector<std::vector<double>>* rejected = nullptr;
};

// Adds the micro-batch's sums and writes row_weight[n] (0 on prompt rows).
void po_objective(const PoMicroBatch& b, const std::vector<double>& logp_chosen,
                  const std::vector<std::vector<double>>& logp_rejected, const PoReference& ref,
                  const PoObjective& objective, std::vector<float>& row_weight, PoSums& sums);

}  // namespace cadtrain::trainer
