// CoreAttention: softmax(Q K^T * scale) V over packed variable-length sequences, causal within each
// sequence and never across sequences. The model calls this interface and does not know whether
// the work runs locally, around a ring, or on attention servers (DESIGN section 2).
//
// Layouts: Q and O are [N, q_heads, D]; K and V are [N, kv_heads, D] (grouped-query attention:
// query head h reads kv head h / (q_heads / kv_heads)); LSE is [N, q_heads], the natural log of
// the softmax denominator of each row (scale included), kept for the backward.
//
// Protocol, per micro-batch (interface version 2):
//   plan = prepare(shape, layout, parts)           once: the strategy may communicate here (who
//                                                  holds which document, the task schedule)
//   per layer, per part p in order:
//     h[l][p] = forward(l, *plan, p, io)           starts O, LSE of part p's rows
//     ... the model may run other work (the other nano-batch's linear layers) ...
//     h[l][p]->wait()                              O and LSE of part p are now written
//   per layer (last to first), per part p from last to first:
//     b = backward(l, *plan, p, *h[l][p], io, grads)   starts dQ of part p, dK/dV contributions
//     b->wait()
// Parts are the row ranges (nano-batches) the model runs as units: disjoint, ascending, covering
// [0, N). A part's queries attend to the causal prefix of their sequence, so to key rows of
// earlier parts too: forward(p) may only start once K and V of parts 0..p are written, and the
// backward of part p adds into dK/dV of earlier parts' rows (hence last to first).
// The forward handle is kept until that layer's backward (a strategy may keep state in it, e.g.
// what an attention server holds); with activation recomputation the model keeps O and LSE and
// never runs forward twice for one micro-batch.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "kernels/attention_tasks.h"  // SequenceLayout, RowRange, the task contract

namespace cadtrain::kernels {

struct AttentionShape {
  int64_t n = 0;         // tokens in the packed micro-batch
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  float softmax_scale = 0;  // usually 1/sqrt(head_dim)
};

// A strategy's per-micro-batch state (tasks, schedule, buffers). Opaque to the model.
class AttentionPlan {
 public:
  virtual ~AttentionPlan() = default;
};

// Completion of a started forward or backward. wait() returns once the call's outputs are
// written (calling it again returns at once); the destructor of an unwaited handle waits.
class AttentionHandle {
 public:
  virtual ~AttentionHandle() = default;
  virtual void wait() = 0;
};

// Tensors of one call, each pointing at row 0 of the micro-batch's buffer (backend memory).
struct AttentionIO {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* o = nullptr;    // forward: written on the part's rows; backward: read
  float* lse = nullptr;  // likewise
};

struct AttentionGrads {
  const float* dout = nullptr;  // [N, q_heads, D], read on the part's rows
  float* dq = nullptr;          // overwritten on the part's rows
  float* dk = nullptr;          // += on every key row the part's queries see (zeroed by the
  float* dv = nullptr;          //    caller once per layer, before the last part's backward)
};

class CoreAttention {
 public:
  virtual ~CoreAttention() = default;
  // Once per micro-batch. layout and parts are copied; the plan outlives neither the strategy
  // nor a later prepare() (the model prepares each micro-batch and drops the previous plan).
  virtual std::unique_ptr<AttentionPlan> prepare(const AttentionShape& shape, const SequenceLayout& layout,
                                                 std::span<const RowRange> parts) = 0;
  // Starts O and LSE of the query rows of parts[part].
  virtual std::unique_ptr<AttentionHandle> forward(int layer, AttentionPlan& plan, size_t part,
                                                   const AttentionIO& io) = 0;
  // Starts the gradients of parts[part] from dO and the forward's O and LSE. `forward` is the
  // handle that forward(layer, plan, part) returned, already waited on.
  virtual std::unique_ptr<AttentionHandle> backward(int layer, AttentionPlan& plan, size_t part,
                                                    AttentionHandle& forward, const AttentionIO& io,
                                                    const AttentionGrads& grads) = 0;
};

// A handle that is complete when created: what strategies that run at once return.
std::unique_ptr<AttentionHandle> completed_attention();

// Whole micro-batch in one call, run to completion (tests, benchmarks, evaluation tools):
// prepare with one part, forward, wait. The backward zeroes dk and dv, then accumulates.
void attention_forward_all(CoreAttention& attention, float* o, float* lse, const float* q, const float* k,
                           const float* v, const AttentionShape& shape, const SequenceLayout& layout);
void attention_backward_all(CoreAttention& attention, float* dq, float* dk, float* dv, const float* dout,
                            const float* q, const float* k, const float* v, const float* o, const float* lse,
                            const AttentionShape& shape, const SequenceLayout& layout);

// Attention computed on this rank by the CPU reference kernel (exact softmax with sgemm, one
// work item per (task, kv head); memory O(task rows x task keys) per thread). It runs the same
// tasks as the fused kernel (sequence_tasks), so it checks it on nano-batch parts too.
std::unique_ptr<CoreAttention> make_local_reference_attention();

// Attention computed on this rank by the fused CPU task kernel (kernels/attention_tasks.h): the
// tasks of sequence_tasks(), tiled online softmax; memory O(N x heads) plus per-thread tiles.
// The model's default (attention.strategy LOCAL). Runs at once: handles are complete.
std::unique_ptr<CoreAttention> make_local_task_attention();

}  // namespace cadtrain::kernels
