// The parts of kernels/core_attention.h that every strategy shares: the complete handle, the
// whole-batch helpers, and the local strategies' plan (local_attention_plan.h).
#include "kernels/core_attention.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "kernels/cpu/cpu_util.h"  // parallel_blocks: the helpers run on host memory
#include "kernels/local_attention_plan.h"

namespace cadtrain::kernels {
namespace {

class CompletedHandle final : public AttentionHandle {
 public:
  void wait() override {}
};

}  // namespace

std::unique_ptr<AttentionHandle> completed_attention() { return std::make_unique<CompletedHandle>(); }

std::unique_ptr<LocalAttentionPlan> make_local_plan(const AttentionShape& shape, const SequenceLayout& layout,
                                                    std::span<const RowRange> parts, const char* op) {
  CADTRAIN_CHECK(shape.n >= 0, "{}: n = {} is negative", op, shape.n);
  const int64_t rows = check_layout(layout, op);
  CADTRAIN_CHECK(rows == shape.n, "{}: the sequences cover {} tokens but n = {}", op, rows, shape.n);
  CADTRAIN_CHECK(!parts.empty(), "{}: no parts (pass one part [0, n) for the whole micro-batch)", op);
  for (size_t p = 0; p < parts.size(); ++p) {
    const int64_t expected = p == 0 ? 0 : parts[p - 1].end;
    CADTRAIN_CHECK(parts[p].begin == expected && parts[p].end >= parts[p].begin,
                   "{}: part {} is rows [{}, {}); parts must be ascending and contiguous, this one starting at {}", op,
                   p, parts[p].begin, parts[p].end, expected);
  }
  CADTRAIN_CHECK(parts.back().end == shape.n, "{}: the parts end at row {}, the micro-batch at {}", op,
                 parts.back().end, shape.n);
  auto plan = std::make_unique<LocalAttentionPlan>();
  plan->shape = shape;
  const auto n_seqs = static_cast<size_t>(layout.n_seqs);
  plan->cu_seqlens.assign(layout.cu_seqlens, layout.cu_seqlens + n_seqs + 1);
  if (layout.first_pos != nullptr) plan->first_pos.assign(layout.first_pos, layout.first_pos + n_seqs);
  if (layout.doc_ids != nullptr) plan->doc_ids.assign(layout.doc_ids, layout.doc_ids + n_seqs);
  plan->parts.assign(parts.begin(), parts.end());
  for (const RowRange& part : parts) plan->tasks.push_back(sequence_tasks(layout, part));
  return plan;
}

LocalAttentionPlan& local_plan(AttentionPlan& plan, size_t part, const char* op) {
  auto* local = dynamic_cast<LocalAttentionPlan*>(&plan);
  CADTRAIN_CHECK(local != nullptr, "{}: the plan was prepared by another attention strategy", op);
  CADTRAIN_CHECK(part < local->parts.size(), "{}: part {} of a plan with {} parts", op, part, local->parts.size());
  return *local;
}

void attention_forward_all(CoreAttention& attention, float* o, float* lse, const float* q, const float* k,
                           const float* v, const AttentionShape& shape, const SequenceLayout& layout) {
  const RowRange all{0, shape.n};
  const auto plan = attention.prepare(shape, layout, std::span<const RowRange>(&all, 1));
  attention.forward(0, *plan, 0, AttentionIO{q, k, v, o, lse})->wait();
}

void attention_backward_all(CoreAttention& attention, float* dq, float* dk, float* dv, const float* dout,
                            const float* q, const float* k, const float* v, const float* o, const float* lse,
                            const AttentionShape& shape, const SequenceLayout& layout) {
  const RowRange all{0, shape.n};
  const auto plan = attention.prepare(shape, layout, std::span<const RowRange>(&all, 1));
  const size_t kv = shape.n > 0 ? static_cast<size_t>(shape.n * shape.kv_heads * shape.head_dim) : 0;
  if (kv > 0) {
    CADTRAIN_CHECK(dk && dv, "attention backward: dk and dv must be non-null");
    cpu::parallel_blocks(kv, [&](size_t b, size_t e) {
      std::fill(dk + b, dk + e, 0.0f);
      std::fill(dv + b, dv + e, 0.0f);
    });
  }
  // The forward's handle: complete (O and LSE are given), so this suits strategies that keep no
  // state in it. O and LSE are only read by a backward.
  const auto done = completed_attention();
  attention.backward(0, *plan, 0, *done, AttentionIO{q, k, v, const_cast<float*>(o), const_cast<float*>(lse)},
                     AttentionGrads{dout, dq, dk, dv})
      ->wait();
}

}  // namespace cadtrain::kernels
