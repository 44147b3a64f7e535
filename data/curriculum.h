// Curriculum loading: which documents are eligible for training at a given step.
//
// Documents are ranked by difficulty, easiest first (ties by document index, so the rank is a
// total order). At step t the easiest admitted_count(t) = ceil(pacing_fraction(t) * n_docs)
// documents (at least one) are eligible; the pacing functions are those of CurriculumConfig in
// configs/cadtrain.proto. Everything here is a pure function of (config, difficulty, step): every
// data-parallel rank builds the same Curriculum and computes the same eligible pool, and a resumed
// run computes the pool its first run would have.
//
// The packer (data/packing.h) applies it once per packing window, at the step the window starts.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"

namespace cadtrain::data {

class Dataset;

// The share of the documents admitted at `step` (in [start_fraction, 1]), with full_at_step
// already resolved (> 0). PACING_NONE gives 1.
double pacing_fraction(const config::CurriculumConfig& cfg, uint64_t step, uint64_t full_at_step);

class Curriculum {
 public:
  // difficulty: one finite value per document (higher is harder). full_at_step: the config's, or
  // total_steps when it is 0. micro_batches_per_step: global micro-batches per optimizer step
  // (data-parallel ranks x grad_accumulation), which maps the packer's counter to steps.
  Curriculum(const config::CurriculumConfig& cfg, std::span<const float> difficulty, uint64_t total_steps,
             uint64_t micro_batches_per_step);

  uint64_t num_docs() const { return rank_.size(); }
  // The step a global micro-batch index belongs to (0-based: the step being trained).
  uint64_t step_of(uint64_t micro_batch) const { return micro_batch / micro_batches_per_step_; }
  // Documents eligible at `step`: in [1, num_docs].
  uint64_t admitted_count(uint64_t step) const;
  // Whether document `doc` is among the easiest `count`.
  bool admitted(uint64_t doc, uint64_t count) const { return rank_[doc] < count; }
  // Position of each document in the easy-to-hard order.
  std::span<const uint64_t> rank() const { return rank_; }
  uint64_t full_at_step() const { return full_at_step_; }

 private:
  config::CurriculumConfig cfg_;
  uint64_t full_at_step_;
  uint64_t micro_batches_per_step_;
  std::vector<uint64_t> rank_;
};

// The curriculum data.curriculum describes for this dataset, or nullptr when pacing is
// PACING_NONE. Throws naming the dataset when it has no /difficulty.
std::shared_ptr<const Curriculum> make_curriculum(const config::CurriculumConfig& cfg, const Dataset& dataset,
                                                  uint64_t total_steps, uint64_t micro_batches_per_step);

// One line for the run's log: the pacing and how many documents it admits at its start and end.
std::string curriculum_summary(const config::CurriculumConfig& cfg, const Curriculum& curriculum);

}  // namespace cadtrain::data
