// CUDA core attention over a task list: the GPU counterpart of kernels/attention_tasks.h, with the
// same task semantics (query rows [q0,q1) against key rows [k0,k1), causal offset from q_pos0 and
// k_pos0, GQA, LSE natural log with the scale included, rows that see no key get O = 0 and
// LSE = -inf). Tensors live on the device:
//   Q, O, dO [rows_q, q_heads, D] bf16;   K, V [rows_kv, kv_heads, D] bf16;   LSE [rows_q, q_heads] fp32
//   dQ [rows_q, q_heads, D] fp32 (overwritten on task rows; tasks sharing query rows, i.e. split
//   keys, sum into them);  dK, dV [rows_kv, kv_heads, D] fp32 (accumulated: tasks and the q heads
//   of a GQA group sum into them; the caller zeroes them first).
// Accumulation is fp32 throughout. head_dim 64 and 128 are supported; others throw.
// Calls are asynchronous on `stream`; the task list is copied to the device before returning and
// scratch is taken with cudaMallocAsync on the same stream. CUDA errors throw cadtrain::Error
// carrying cudaGetErrorString.
//
// The entry points taking std::span are inline (C++20 callers); they pack the tasks into
// DeviceAttentionTask records and call the *_device functions, which the C++17 CUDA file defines.
#pragma once

#include <cuda_bf16.h>       // __nv_bfloat16
#include <cuda_runtime.h>    // cudaStream_t

#include <cstddef>
#include <cstdint>

namespace cadtrain::cuda {

// One task as the kernels read it (fields as in kernels::AttentionTask).
struct DeviceAttentionTask {
  int64_t q0 = 0, q1 = 0, k0 = 0, k1 = 0;
  int64_t q_pos0 = 0, k_pos0 = 0;
  int32_t causal = 1;
  int32_t reserved = 0;
};

struct DeviceAttentionDims {
  int64_t q_heads = 0, kv_heads = 0, head_dim = 0;
  float softmax_scale = 0;
};

// O and LSE of every task's query rows; tasks must not share query rows (merge partials instead).
void attention_forward_tasks_device(__nv_bfloat16* o, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                                    const __nv_bfloat16* v, const DeviceAttentionTask* tasks, size_t num_tasks,
                                    const DeviceAttentionDims& dims, cudaStream_t stream);

// dQ, dK, dV from dO, O and LSE (for split keys: the merged O and LSE); P is recomputed from LSE.
void attention_backward_tasks_device(float* dq, float* dk, float* dv, const __nv_bfloat16* dout,
                                     const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                     const __nv_bfloat16* o, const float* lse, const DeviceAttentionTask* tasks,
                                     size_t num_tasks, const DeviceAttentionDims& dims, cudaStream_t stream);

}  // namespace cadtrain::cuda

#if __cplusplus >= 202002L
#include <span>
#include <vector>

#include "kernels/attention_tasks.h"  // AttentionTask, AttentionDims

namespace cadtrain::cuda {

inline std::vector<DeviceAttentionTask> to_device_tasks(std::span<const kernels::AttentionTask> tasks) {
  std::vector<DeviceAttentionTask> out(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const auto& t = tasks[i];
    out[i] = {t.q0, t.q1, t.k0, t.k1, t.q_pos0, t.k_pos0, t.causal ? 1 : 0, 0};
  }
  return out;
}

inline DeviceAttentionDims to_device_dims(const kernels::AttentionDims& d) {
  return {d.q_heads, d.kv_heads, d.head_dim, d.softmax_scale};
}

inline void attention_forward_tasks_cuda(__nv_bfloat16* o, float* lse, const __nv_bfloat16* q,
                                         const __nv_bfloat16* k, const __nv_bfloat16* v,
                                         std::span<const kernels::AttentionTask> tasks,
                                         const kernels::AttentionDims& dims, cudaStream_t stream) {
  const auto device_tasks = to_device_tasks(tasks);
  attention_forward_tasks_device(o, lse, q, k, v, device_tasks.data(), device_tasks.size(), to_device_dims(dims),
                                 stream);
}

inline void attention_backward_tasks_cuda(float* dq, float* dk, float* dv, const __nv_bfloat16* dout,
                                          const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                          const __nv_bfloat16* o, const float* lse,
                                          std::span<const kernels::AttentionTask> tasks,
                                          const kernels::AttentionDims& dims, cudaStream_t stream) {
  const auto device_tasks = to_device_tasks(tasks);
  attention_backward_tasks_device(dq, dk, dv, dout, q, k, v, o, lse, device_tasks.data(), device_tasks.size(),
                                  to_device_dims(dims), stream);
}

}  // namespace cadtrain::cuda
#endif
