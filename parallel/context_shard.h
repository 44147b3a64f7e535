// Context-parallel sharding of a packed micro-batch (DESIGN section 4): which rows of the global
// micro-batch a rank of a P-rank context-parallel group holds, as its own packed layout whose
// sequences keep their document id and true first position (so any CoreAttention strategy that
// reads the layout, e.g. ring attention, attends exactly as one process would).
//
//   zigzag: every sequence is cut into 2P chunks of near-equal length (chunk c = rows
//           [len*c/(2P), len*(c+1)/(2P)) of the sequence); rank r holds chunks r and 2P-1-r, so
//           each rank gets an early and a late piece of every document (causal balance).
//   plain:  every sequence is cut into P chunks; rank r holds chunk r.
// Empty chunks (documents shorter than the chunk count) are left out, so a rank's share may be
// empty. Chunks keep their order: a rank's rows are in ascending global order.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention_tasks.h"

namespace cadtrain::parallel {

struct ContextShard {
  std::vector<int64_t> rows;         // global row of each local row
  std::vector<int32_t> cu_seqlens;   // [n_seqs + 1] local layout
  std::vector<int32_t> first_pos;    // [n_seqs]
  std::vector<uint64_t> doc_ids;     // [n_seqs] (the global sequence index when global has none)
  kernels::SequenceLayout layout() const {
    return {cu_seqlens.data(), static_cast<int64_t>(cu_seqlens.size()) - 1, first_pos.data(), doc_ids.data()};
  }
};

// Rank `rank`'s share of the micro-batch `global` on a group of `ranks`. Throws on a bad layout
// or rank.
ContextShard shard_for_context_rank(const kernels::SequenceLayout& global, int ranks, int rank, bool zigzag);

}  // namespace cadtrain::parallel
