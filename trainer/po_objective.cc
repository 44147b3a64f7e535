// The preference objective of one micro-batch (po_objective.h).
#include "trainer/po_objective.h"

#include "common/error.h"

namespace cadtrain::trainer {

void PoSums::add(const PoSums& o) {
  examples += o.examples;
  pairs += o.pairs;
  loss += o.loss;
  reward_chosen += o.reward_chosen;
  reward_rejected += o.reward_rejected;
  correct += o.correct;
  sft += o.sft;
}

void po_objective(const PoMicroBatch& b, const std::vector<double>& logp_chosen,
                  const std::vector<std::vector<double>>& logp_rejected, const PoReference& ref,
                  const PoObjective& objective, std::vector<float>& row_weight, PoSums& sums) {
  row_weight.assign(b.mb.tokens.size(), 0.0f);
  const auto set_weight = [&](ResponseRows r, double d_logp) {
    for (int64_t i = r.begin; i < r.end; ++i) row_weight[static_cast<size_t>(i)] = static_cast<float>(-d_logp);
  };
  for (size_t e = 0; e < b.examples.size(); ++e) {
    const PoExampleRows& ex = b.examples[e];
    const size_t m = ex.rejected.size();
    CADTRAIN_CHECK(m >= 1 && logp_rejected[e].size() == m, "example {} has {} rejected rows and {} log-probabilities",
                   ex.example, m, logp_rejected[e].size());
    const int64_t len_w = ex.chosen.size();
    sums.examples += 1;
    sums.pairs += static_cast<double>(m);
    sums.sft += -logp_chosen[e] / static_cast<double>(len_w);
    if (objective.logo) {
      std::vector<int64_t> lens;
      for (const ResponseRows r : ex.rejected) lens.push_back(r.size());
      const LogoResult r = logo_loss(logp_chosen[e], len_w, logp_rejected[e], lens, objective.logo_options);
      sums.loss += r.loss;
      sums.reward_chosen += r.reward_chosen;
      sums.reward_rejected += r.reward_rejected;
      for (size_t j = 0; j < m; ++j) {
        const double reward_j = objective.logo_options.beta * logp_rejected[e][j] / static_cast<double>(lens[j]);
        sums.correct += r.reward_chosen > reward_j ? 1 : 0;
        set_weight(ex.rejected[j], r.d_logp_rejected[j]);
      }
      set_weight(ex.chosen, r.d_logp_chosen);
      continue;
    }
    CADTRAIN_CHECK(ref.chosen != nullptr && ref.rejected != nullptr, "LN preference loss without reference");
    const double inv_m = 1.0 / static_cast<double>(m);
    double d_chosen = 0;
    for (size_t j = 0; j < m; ++j) {
      const LnPreferenceResult r =
          ln_preference_loss(logp_chosen[e], (*ref.chosen)[e], len_w, logp_rejected[e][j], (*ref.rejected)[e][j],
                             ex.rejected[j].size(), objective.ln);
      sums.loss += r.loss * inv_m;
      if (j == 0) sums.reward_chosen += r.reward_chosen;
      sums.reward_rejected += r.reward_rejected * inv_m;
      sums.correct += r.reward_chosen > r.reward_rejected ? 1 : 0;
      d_chosen += r.d_logp_chosen * inv_m;
      set_weight(ex.rejected[j], r.d_logp_rejected * inv_m);
    }
    set_weight(ex.chosen, d_chosen);
  }
}

}  // namespace cadtrain::trainer
