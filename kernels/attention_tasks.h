// The core-attention task API: the contract that local attention, ring attention, TokenRing and
// the attention servers all execute (DESIGN section 3). One call runs many tasks of arbitrary
// lengths fused together. The arithmetic (visible keys, pair count, merge weights) is in
// kernels/attention_task_math.h, shared with the CUDA kernels; the layout of a micro-batch's
// sequences and the one planner that turns it into tasks are below.
//
// A task: query rows [q0, q1) and key/value rows [k0, k1) of packed tensors
//   Q [rows_q, q_heads, D], K and V [rows_kv, kv_heads, D]   (GQA: q head h reads kv head h / group)
//   O [rows_q, q_heads, D], LSE [rows_q, q_heads] (fp32, natural log, scale included)
// Causal masking follows the tokens' positions in their document: query row i (position
// q_pos0 + i - q0) sees key row j (position k_pos0 + j - k0) iff key position <= query position,
// so a query shard in the middle of a document attends to exactly its causal prefix when given
// the prefix as its key range. Non-causal tasks see every key. A query row that sees no key gets
// O = 0 and LSE = -inf (so that merging with another partial is exact).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/attention_task_math.h"

namespace cadtrain::kernels {

// The sequences of a packed micro-batch (host memory): sequence s is rows
// [cu_seqlens[s], cu_seqlens[s+1]), a piece of document doc_ids[s] whose first row has position
// first_pos[s] in that document (a document split across micro-batches or ranks keeps its true
// positions). Attention never crosses a sequence boundary.
struct SequenceLayout {
  const int32_t* cu_seqlens = nullptr;  // [n_seqs + 1], cu_seqlens[0] = 0, non-decreasing
  int64_t n_seqs = 0;
  const int32_t* first_pos = nullptr;   // [n_seqs]; nullptr: every sequence starts its document
  const uint64_t* doc_ids = nullptr;    // [n_seqs]; nullptr: not known (sequences are distinct)
};

// Rows [begin, end) of a micro-batch, e.g. one nano-batch.
struct RowRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Throws naming `op` unless the layout is well formed; returns its row count.
int64_t check_layout(const SequenceLayout& layout, const char* op);

struct AttentionTask {
  int64_t q0 = 0, q1 = 0;          // query rows [q0, q1)
  int64_t k0 = 0, k1 = 0;          // key/value rows [k0, k1)
  int64_t q_pos0 = 0, k_pos0 = 0;  // document positions of rows q0 and k0
  bool causal = true;
};

struct AttentionDims {
  int64_t q_heads = 0, kv_heads = 0, head_dim = 0;
  float softmax_scale = 0;
};

// Causal (or full) (query, key) pairs of one task: the work its cost model counts.
uint64_t task_pairs(const AttentionTask& task);

// The one planner of whole-sequence attention on a device that holds the micro-batch's K and V:
// for query rows `rows`, one causal task per sequence overlapping them, with query rows the
// overlap, key rows from the sequence's first row to the overlap's end (earlier rows of the
// sequence included, so a later nano-batch attends to the earlier one's keys) and positions from
// first_pos. The tasks share neither query nor key rows. Throws unless the layout is well formed.
std::vector<AttentionTask> sequence_tasks(const SequenceLayout& layout, RowRange rows);

// Causal pairs of the whole micro-batch: the sum of task_pairs over sequence_tasks(layout, all
// rows), i.e. sum of T(T+1)/2 over sequences (the FLOP count of MFU and of the cost model).
uint64_t layout_pairs(const SequenceLayout& layout);

// O and LSE of every task's query rows (rows not covered by any task are left untouched). Tasks
// that share query rows are not allowed here: split the keys into one task and merge partials.
void attention_forward_tasks(float* o, float* lse, const float* q, const float* k, const float* v,
                             std::span<const AttentionTask> tasks, const AttentionDims& dims);

// dQ (overwritten on task rows; tasks sharing query rows, i.e. split keys, sum into them), dK
// and dV (accumulated: tasks sharing key rows sum into them; the caller zeroes them first) from
// dO, O and LSE (for split keys: the merged O and LSE).
void attention_backward_tasks(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                              const float* v, const float* o, const float* lse, std::span<const AttentionTask> tasks,
                              const AttentionDims& dims);

// Merges partial results over disjoint key ranges in place: (o_a, lse_a) <- merge((o_a, lse_a),
// (o_b, lse_b)), rows x heads of width head_dim. Exact and stable: lse = max + log1p(exp(min-max)),
// and a side with LSE -inf (no keys) contributes nothing.
void merge_attention_partials(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t rows,
                              int64_t heads, int64_t head_dim);

}  // namespace cadtrain::kernels
