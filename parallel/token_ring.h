// TokenRing (DESIGN section 4) as a kernels::CoreAttention: K and V stay; each rank's query block
// travels around the ring the other way (rank r sends to r-1, receives from r+1), and at step s
// rank r attends the queries of rank r+s to its own keys (one task per same-document sequence
// pair, fused task kernel) and sends the partial (O, LSE) straight back to their owner, which
// merges the partials exactly. Each link carries queries one way and results the other.
// Backward: the query block travels again with dO, O and LSE; rank r adds the block's share of
// dK and dV into its own (K and V never move) and sends the block's partial dQ back to its owner,
// which sums them. Varlen, GQA, documents split across ranks (by document id and true position,
// as ring attention). Parts (nano-batches) run together, as ring attention (ring_attention.h).
//
// Bytes this rank sends per layer (F32, qd = q_heads * D, hq = q_heads, n_j rows of rank j):
//   forward:  queries  sum_{s=0..P-2} n_{r+s} * qd * 4;   results sum_{s=1..P-1} n_{r+s} * (qd + hq) * 4
//   backward: Q, dO, O, LSE  sum_{s=0..P-2} n_{r+s} * (3 qd + hq) * 4;   dQ sum_{s=1..P-1} n_{r+s} * qd * 4
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/core_attention.h"
#include "parallel/communicator.h"
#include "parallel/ring_attention.h"  // RingTraffic

namespace cadtrain::parallel {

class TokenRingAttention final : public kernels::CoreAttention {
 public:
  // group: the context-parallel communicator (host memory); it must outlive this object.
  explicit TokenRingAttention(Communicator& group);
  ~TokenRingAttention() override;

  std::unique_ptr<kernels::AttentionPlan> prepare(const kernels::AttentionShape& shape,
                                                  const kernels::SequenceLayout& layout,
                                                  std::span<const kernels::RowRange> parts) override;
  std::unique_ptr<kernels::AttentionHandle> forward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                    const kernels::AttentionIO& io) override;
  std::unique_ptr<kernels::AttentionHandle> backward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                     kernels::AttentionHandle& forward, const kernels::AttentionIO& io,
                                                     const kernels::AttentionGrads& grads) override;

  // Bytes this rank sent for `layer` in the last micro-batch (queries and results together).
  RingTraffic traffic(int layer) const;

 private:
  Communicator& group_;
  std::vector<RingTraffic> traffic_;
};

}  // namespace cadtrain::parallel
