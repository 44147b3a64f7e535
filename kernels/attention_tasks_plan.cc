// The device-neutral part of the task contract (kernels/attention_tasks.h): layout checks, the
// sequence planner and the pair count. No kernel code here; CPU and CUDA paths both call it.
#include <algorithm>

#include "common/error.h"
#include "kernels/attention_tasks.h"

namespace cadtrain::kernels {

int64_t check_layout(const SequenceLayout& layout, const char* op) {
  const int32_t* cu = layout.cu_seqlens;
  CADTRAIN_CHECK(layout.n_seqs >= 0, "{}: n_seqs = {} is negative", op, layout.n_seqs);
  CADTRAIN_CHECK(cu != nullptr, "{}: cu_seqlens is null", op);
  CADTRAIN_CHECK(cu[0] == 0, "{}: cu_seqlens[0] = {}, expected 0", op, cu[0]);
  for (int64_t s = 0; s < layout.n_seqs; ++s) {
    CADTRAIN_CHECK(cu[s + 1] >= cu[s], "{}: cu_seqlens[{}] = {} < cu_seqlens[{}] = {}", op, s + 1, cu[s + 1], s,
                   cu[s]);
    if (layout.first_pos != nullptr) {
      CADTRAIN_CHECK(layout.first_pos[s] >= 0, "{}: first_pos[{}] = {} is negative", op, s, layout.first_pos[s]);
    }
  }
  return cu[layout.n_seqs];
}

uint64_t task_pairs(const AttentionTask& task) {
  if (task.q1 <= task.q0 || task.k1 <= task.k0) return 0;
  const int64_t nq = task.q1 - task.q0, nk = task.k1 - task.k0;
  return static_cast<uint64_t>(task_math::pairs_of_rows(0, nq, task.q_pos0 - task.k_pos0, nk, task.causal));
}

std::vector<AttentionTask> sequence_tasks(const SequenceLayout& layout, RowRange rows) {
  const int64_t n = check_layout(layout, "sequence_tasks");
  CADTRAIN_CHECK(rows.begin >= 0 && rows.end >= rows.begin && rows.end <= n,
                 "sequence_tasks: rows [{}, {}) outside the micro-batch's {} rows", rows.begin, rows.end, n);
  std::vector<AttentionTask> tasks;
  const int32_t* cu = layout.cu_seqlens;
  // First sequence that ends after rows.begin (cu is sorted).
  int64_t s = std::upper_bound(cu + 1, cu + layout.n_seqs + 1, rows.begin) - (cu + 1);
  for (; s < layout.n_seqs && cu[s] < rows.end; ++s) {
    const int64_t s0 = cu[s], s1 = cu[s + 1];
    const int64_t q0 = std::max(s0, rows.begin), q1 = std::min(s1, rows.end);
    if (q1 <= q0) continue;
    const int64_t pos0 = layout.first_pos != nullptr ? layout.first_pos[s] : 0;
    tasks.push_back({q0, q1, s0, q1, pos0 + (q0 - s0), pos0, true});
  }
  return tasks;
}

uint64_t layout_pairs(const SequenceLayout& layout) {
  const int64_t n = check_layout(layout, "layout_pairs");
  uint64_t pairs = 0;
  for (const AttentionTask& t : sequence_tasks(layout, {0, n})) pairs += task_pairs(t);
  return pairs;
}

}  // namespace cadtrain::kernels
