// Internal to kernels/: the plan of the strategies that run on this rank alone (the fused task
// kernel and the reference): the layout copied, the parts checked, and each part's tasks from
// the contract's one planner (sequence_tasks).
#pragma once

#include <memory>
#include <vector>

#include "kernels/core_attention.h"

namespace cadtrain::kernels {

struct LocalAttentionPlan final : AttentionPlan {
  AttentionShape shape;
  std::vector<int32_t> cu_seqlens;
  std::vector<int32_t> first_pos;  // empty: all 0
  std::vector<uint64_t> doc_ids;   // empty: not known
  std::vector<RowRange> parts;
  std::vector<std::vector<AttentionTask>> tasks;  // per part
};

// Checks shape, layout and parts (disjoint, ascending, covering [0, n)); throws naming op.
std::unique_ptr<LocalAttentionPlan> make_local_plan(const AttentionShape& shape, const SequenceLayout& layout,
                                                    std::span<const RowRange> parts, const char* op);

// The plan as a LocalAttentionPlan, and the part's tasks; throws naming op when the plan came
// from another strategy or the part does not exist.
LocalAttentionPlan& local_plan(AttentionPlan& plan, size_t part, const char* op);

inline AttentionDims dims_of(const AttentionShape& s) { return {s.q_heads, s.kv_heads, s.head_dim, s.softmax_scale}; }

}  // namespace cadtrain::kernels
