// Ring attention (DESIGN section 4) as a kernels::CoreAttention: the ranks of a context-parallel
// group each hold some rows of one micro-batch (e.g. a zigzag shard, parallel/context_shard.h),
// described by a layout whose sequences carry document ids and true first positions. Q stays;
// K and V travel around the ring (rank r sends to r+1, receives from r-1) for P-1 steps, and at
// step s rank r attends its queries to the rows of rank r-s: one task per pair of sequences of
// the same document with a visible (query, key) pair, on the fused task kernel; the partial
// (O, LSE) of each step merge exactly (merge_attention_partials). Backward: K and V go round
// again with fp32 dK/dV accumulators travelling with them, which return home after the last
// step; dQ sums over steps. Sends and receives are non-blocking and double-buffered: the next
// step's K/V transfer overlaps this step's compute (the accumulators' hop does not).
//
// prepare() all-gathers the group's layouts (two small collectives per micro-batch). With several
// parts (nano-batches) the ring runs once over all rows: at the last part's forward and at part
// 0's backward (the model calls every part's forward before waiting on any, and part 0's backward
// last); an earlier part's handle waited on before that is an error.
//
// Bytes this rank sends per layer (F32, kvd = kv_heads * head_dim, n_j = rows of rank j):
//   forward:  sum over s = 0..P-2 of 2 * n_{r-s} * kvd * 4          (K and V)
//   backward: the same again for K and V, plus 2 * (sum over j of n_j) * kvd * 4 (dK and dV).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/core_attention.h"
#include "parallel/communicator.h"

namespace cadtrain::parallel {

// Bytes sent to rank+1 by the last forward and backward of one layer.
struct RingTraffic {
  uint64_t forward_bytes = 0;
  uint64_t backward_bytes = 0;
};

class RingAttention final : public kernels::CoreAttention {
 public:
  // group: the context-parallel communicator (host memory); it must outlive this object.
  explicit RingAttention(Communicator& group);
  ~RingAttention() override;

  std::unique_ptr<kernels::AttentionPlan> prepare(const kernels::AttentionShape& shape,
                                                  const kernels::SequenceLayout& layout,
                                                  std::span<const kernels::RowRange> parts) override;
  std::unique_ptr<kernels::AttentionHandle> forward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                    const kernels::AttentionIO& io) override;
  std::unique_ptr<kernels::AttentionHandle> backward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                     kernels::AttentionHandle& forward, const kernels::AttentionIO& io,
                                                     const kernels::AttentionGrads& grads) override;

  // Traffic of `layer` in the last micro-batch (zero for layers not run).
  RingTraffic traffic(int layer) const;

 private:
  Communicator& group_;
  std::vector<RingTraffic> traffic_;
};

}  // namespace cadtrain::parallel
