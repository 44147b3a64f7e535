// TrainGroup: what the training loop knows about the other processes training the same model.
// The loop is written for one rank of many; the single-process group below makes "many" = 1, and
// the parallel code (parallel/) implements the same interface over its communicator.
//
// What the loop does with it, every step:
//   1. packs this rank's micro-batches (data::PackerOptions rank = data_rank(), world = data_ranks());
//   2. sums the loss-mask weight over the group (sum_over_batch), so every rank scales its loss by
//      1 / (weight of the whole global batch) and the summed gradients are the global-batch mean;
//   3. passes gradient_sync to the backward of its last micro-batch, then calls finish_step();
//   4. sums the loss the same way, so every rank reports the global-batch loss;
//   5. writes logs, metrics, the run directory and checkpoints, generates missing data and runs
//      evaluation only where is_writer(); the other ranks wait for the writer's data in a
//      sum_over_batch, and stop together with it (a stop request is summed with the step's batch).
// The multi-process implementation is trainer/parallel_group.h.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "configs/cadtrain.pb.h"
#include "data/packing.h"
#include "kernels/core_attention.h"
#include "trainer/grad_sync.h"

namespace cadtrain::kernels {
class Backend;
}

namespace cadtrain::trainer {

class ParameterSet;

class TrainGroup {
 public:
  virtual ~TrainGroup() = default;
  // This process's data-parallel rank and the number of data-parallel ranks: rank r packs global
  // micro-batches r, r + W, ... (data/packing.h).
  virtual uint32_t data_rank() const = 0;
  virtual uint32_t data_ranks() const = 0;
  // Ranks of the whole job (what `check_supported` validates the config's layout against).
  virtual uint32_t world_size() const { return data_ranks(); }
  // Exactly one process of the job returns true: it creates the run directory, prints and writes
  // metrics, and writes checkpoints.
  virtual bool is_writer() const = 0;
  // In-place sum over every rank of the job, identical on all ranks afterwards and reproducible
  // (fixed reduction order). Each rank passes what it holds of the global batch (tokens it holds,
  // loss it computed), so that the sum counts every token of the global batch once. Blocking: the
  // ranks also use it to wait for each other.
  virtual void sum_over_batch(std::span<double> values) = 0;
  // The hook that synchronises gradients (grad_sync.h), built once the model's parameters exist.
  virtual std::unique_ptr<GradientSync> make_gradient_sync(ParameterSet& params, kernels::Backend& backend) = 0;

  // Context parallelism. The context_ranks() ranks of one context-parallel group share every
  // micro-batch: the loop packs micro-batches of context_ranks() x data.tokens_per_micro_batch
  // tokens (the same on each of them), each rank trains on context_share() of its rows, and the
  // model runs on make_core_attention(), which lets a rank's queries see the rows the others
  // hold; summing the gradients over all ranks then gives the whole micro-batch's. The defaults
  // (no context parallelism): 1, the whole micro-batch, nullptr = LOCAL attention in this process.
  virtual uint32_t context_ranks() const { return 1; }
  virtual data::MicroBatch context_share(data::MicroBatch global) const { return global; }
  virtual std::unique_ptr<kernels::CoreAttention> make_core_attention() { return nullptr; }
};

// The group of one process: rank 0 of 1, writer, sums are the identity, LocalGradientSync.
std::unique_ptr<TrainGroup> make_single_process_group();

}  // namespace cadtrain::trainer
