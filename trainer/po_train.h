// Preference optimization (issue 12): the training loop for `loss { preference { ... } }`, the
// per-micro-batch step it is made of, and `cadtrain po prepare-ref`.
//
// A micro-batch step: (1) forward the policy with per-row losses -> log pi(y|x) of every
// response; (2) reference log-probabilities from the store or a frozen reference model on the
// same rows and positions; (3) the objective (po_objective.h) -> loss, metrics, row weights;
// (4) the policy's forward + backward with loss_mask = row weights, which accumulates exactly
// grad_scale * dL/dtheta. Costs two policy forwards and one backward (plus a reference forward).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "configs/cadtrain.pb.h"
#include "data/prefs_store.h"
#include "trainer/model.h"
#include "trainer/po_objective.h"
#include "trainer/train_group.h"
#include "trainer/train_loop.h"

namespace cadtrain::trainer {

// The objective a config asks for (beta 0 resolved to the loss's usual value).
PoObjective po_objective_from(const config::PreferenceConfig& cfg);
PositionSynthesis position_synthesis_from(const config::PreferenceConfig& cfg);

// One micro-batch: steps (1)-(4) above, or (1)-(3) when grad_scale is 0 (evaluation). reference:
// a frozen model, or nullptr to use the store's values (or none, for LOGO).
PoSums po_micro_batch_step(Model& policy, Model* reference, PoMicroBatch& batch, const PoObjective& objective,
                           float grad_scale, GradientSync* grad_sync);

// Mean objective and metrics over every example of the store (no gradients), micro-batches of up
// to max_rows rows, no position synthesis.
PoSums evaluate_preferences(Model& policy, Model* reference, const data::PrefsStore& store,
                            const config::PreferenceConfig& cfg, int64_t max_rows);

// The training loop (called by train() when cfg.loss().preference().prefs_path() is set).
TrainResult train_preference(const config::RunConfig& cfg, const std::string& provenance,
                             const std::string& resume_from, TrainGroup& group);

struct PrepareRefOptions {
  std::string reference;  // checkpoint file or run directory
  std::string prefs;      // store to read
  std::string out;        // store to write ("" = rewrite prefs in place, atomically)
};
struct PrepareRefSummary {
  uint64_t examples = 0, responses = 0;
  double mean_logp_per_token = 0;
  double seconds = 0;
};
// Computes log pi_ref of every response (all rejected) at natural positions and writes a copy of
// the store with /ref_logps.
PrepareRefSummary prepare_reference(const PrepareRefOptions& options);

}  // namespace cadtrain::trainer
