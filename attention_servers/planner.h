// `cadtrain plan`'s engine: draw batches from the configured length distribution, simulate every
// strategy on each (simulate.h), average, state the assumptions; and the reproduction of the
// published reference points of DESIGN section 9 on the published setups.
#pragma once

#include <string>
#include <vector>

#include "attention_servers/simulate.h"
#include "configs/cadtrain.pb.h"

namespace cadtrain::attention_servers {

struct PlannerReport {
  Machine machine;
  std::vector<StrategyResult> mean;                 // per strategy, figures averaged over batches
  std::vector<std::vector<StrategyResult>> batches; // [batch][strategy], with per-rank figures
  std::vector<std::string> assumptions;
  size_t documents = 0;
  double mean_doc_tokens = 0, max_doc_tokens = 0;
};

// Throws cadtrain::Error naming the field or file at fault (histogram file, cluster too small).
PlannerReport run_planner(const config::RunConfig& cfg);

// One published figure beside ours.
struct Reproduction {
  std::string figure, published, ours, setup, comment;
};
// Runs the published setups derived from `base` (its model, cluster and document source).
std::vector<Reproduction> reproduce_published(const config::RunConfig& base);

}  // namespace cadtrain::attention_servers
