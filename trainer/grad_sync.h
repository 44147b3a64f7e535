// GradientSync: the seam through which data parallelism sees the backward. The model calls
// grads_ready() as each group of parameters gets its final gradient of the step, so that a
// data-parallel implementation (parallel/, bucketed all-reduce) can start reducing those
// gradients while the backward of the layers below is still running; the trainer calls
// finish_step() before it reads any gradient (norm, optimizer).
//
// Contract (what an implementation may rely on):
// - Gradients live in one flat buffer, Model::params().grads(); parameter i occupies floats
//   [info(i).offset, info(i).offset + info(i).numel). A ready group is a run of consecutive
//   parameter indices whose floats are one contiguous range [offset, offset + count).
// - Calls happen only during the backward of the last micro-batch of a step (the trainer passes
//   the hook to that Model::forward_backward call only), so each gradient is final when announced:
//   earlier micro-batches have already accumulated into it.
// - Order, fixed for a given model (so the reduction order, hence the bits, are reproducible):
//     1. the head: final_norm, plus lm_head when it is not tied to the embedding;
//     2. the layers, last to first (layers.L-1.*, ..., layers.0.*), each once all of its
//        nano-batches' backward is done;
//     3. the embedding (with the tied LM head's share, the embedding is complete only here).
//   Every parameter is announced exactly once per step, and offsets decrease from one call to
//   the next (the flat buffer is declared embedding, layers 0..L-1, final_norm, lm_head).
// - After grads_ready() returns, the model never writes those floats again this step; the
//   implementation may reduce them in place (asynchronously) until finish_step().
// - What the implementation must leave after finish_step(): every rank holds the SUM over the
//   data-parallel ranks of their gradients. The trainer scales the loss by 1 / (loss-mask weight
//   of the whole global batch, all ranks), so the sum is exactly the global-batch gradient; no
//   division by the rank count. (A sharded optimizer may instead leave only its shard reduced, as
//   long as the optimizer reads only that shard.)
#pragma once

#include <cstddef>
#include <cstdint>

namespace cadtrain::trainer {

// Parameters [first_param, end_param) of Model::params(), floats [offset, offset + count) of the
// flat gradient buffer. layer: the model layer, or -1 for the head group, or -2 for the embedding.
struct GradGroup {
  size_t first_param = 0, end_param = 0;
  size_t offset = 0, count = 0;
  int layer = 0;
  static constexpr int kHead = -1;
  static constexpr int kEmbedding = -2;
};

class GradientSync {
 public:
  virtual ~GradientSync() = default;
  // The gradients of `group` are final for this step (see the contract above). May start a
  // non-blocking reduction; must not block on other ranks for long (the backward is waiting).
  virtual void grads_ready(const GradGroup& group) = 0;
  // Completes every reduction started since the last finish_step(): afterwards the gradient
  // buffer holds the synchronised gradients. Called by the trainer once per step, after the last
  // micro-batch's backward and before the gradient norm, on every rank.
  virtual void finish_step() = 0;
};

// One process, nothing to synchronise: grads_ready() only checks the contract (groups arrive
// with decreasing offsets and cover each parameter once per step) and finish_step() resets it.
class LocalGradientSync final : public GradientSync {
 public:
  explicit LocalGradientSync(size_t n_params) : n_params_(n_params) {}
  void grads_ready(const GradGroup& group) override;
  void finish_step() override;
  // Groups announced in the last finished step (for tests).
  size_t last_step_groups() const { return last_step_groups_; }

 private:
  size_t n_params_ = 0;
  size_t announced_params_ = 0;
  size_t groups_ = 0;
  size_t last_step_groups_ = 0;
  size_t next_end_ = SIZE_MAX;  // offsets must decrease: the next group ends at or below this
};

}  // namespace cadtrain::trainer
