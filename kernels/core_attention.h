// CoreAttention: softmax(Q K^T * scale) V over packed variable-length sequences, causal within each
// sequence and never across sequences. The model calls this interface and does not know whether
// the work runs locally, around a ring, or on attention servers (DESIGN section 2).
//
// Layouts: Q and O are [N, q_heads, D]; K and V are [N, kv_heads, D] (grouped-query attention:
// query head h reads kv head h / (q_heads / kv_heads)); LSE is [N, q_heads], the natural log of
// the softmax denominator of each row (scale included), kept for the backward.
#pragma once

#include <cstdint>
#include <memory>

namespace cadtrain::kernels {

class Backend;

struct AttentionShape {
  int64_t n = 0;         // tokens in the packed micro-batch
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  float softmax_scale = 0;  // usually 1/sqrt(head_dim)
};

// Sequence boundaries, host memory: sequence s is tokens [cu_seqlens[s], cu_seqlens[s+1]).
struct SequenceLayout {
  const int32_t* cu_seqlens = nullptr;
  int64_t n_seqs = 0;
};

class CoreAttention {
 public:
  virtual ~CoreAttention() = default;
  // o and lse are overwritten.
  virtual void forward(float* o, float* lse, const float* q, const float* k, const float* v,
                       const AttentionShape& shape, const SequenceLayout& layout) = 0;
  // dq, dk, dv are overwritten; o and lse are the forward's outputs.
  virtual void backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* o, const float* lse, const AttentionShape& shape,
                        const SequenceLayout& layout) = 0;
};

// Attention computed on this rank by the CPU reference kernel (one sgemm-based pass per
// sequence and head; memory O(longest sequence^2) per thread). For tests and comparison.
std::unique_ptr<CoreAttention> make_local_reference_attention();

// Attention computed on this rank by the fused CPU task kernel (kernels/attention_tasks.h): one
// causal task per sequence, tiled online softmax; memory O(N x heads) plus per-thread tiles.
// The model's default.
std::unique_ptr<CoreAttention> make_local_task_attention();

}  // namespace cadtrain::kernels
