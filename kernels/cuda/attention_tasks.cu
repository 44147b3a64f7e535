// CUDA core attention over a task list (FlashAttention-2 style), bf16 in, fp32 accumulation.
//
// Strategy (first, correctness-first version: scalar fp32 FMA, no tensor cores):
// - A thread block owns one work item: (task, q head, tile of kTile = 64 rows). 256 threads; four
//   adjacent lanes share one row, each holding a quarter of the head dimension (the bf16 pairs
//   s, s+4, s+8, ... so that the four lanes read consecutive shared-memory words); a dot product is
//   the lane's partial sum reduced with two xor shuffles.
// - Forward: Q row in registers, pre-scaled by softmax_scale*log2(e); K and V tiles of 64 rows
//   staged in shared memory (bf16); online softmax over chunks of 16 keys in the log2 domain;
//   key tiles past the block's last causal position are skipped. LSE = (m + log2 l) * ln 2.
// - Backward: delta = rowsum(dO * O) by a small kernel; dQ by a query-tile kernel that recomputes
//   P = exp(S - LSE) against K/V tiles; dK and dV by a key-tile kernel that keeps its key rows'
//   K, V, dK, dV in registers and walks the query rows that can see them (Q, dO, LSE, delta
//   staged in shared memory), then atomically adds into dK/dV (tasks sharing key rows and the q
//   heads of a GQA group sum there).
#include "kernels/cuda/attention_tasks_cuda.h"

#include "kernels/attention_task_math.h"  // visible keys, first row seeing a key: the shared contract

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "common/error.h"  // cadtrain::Error, fail

namespace cadtrain::cuda {
namespace {

constexpr int kTile = 64;           // rows per tile (query rows of a block, or key rows)
constexpr int kLanesPerRow = 4;     // threads sharing one row
constexpr int kThreads = kTile * kLanesPerRow;
constexpr int kChunk = 16;          // keys per online-softmax rescale in the forward
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// One block's work: a tile of rows of one task (query rows, or key rows for dK/dV).
struct WorkItem {
  int32_t task = 0;
  int32_t reserved = 0;
  int64_t row0 = 0;
};

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail("CUDA attention: {}: {}", what, cudaGetErrorString(err));
}

// Device copy of the tasks followed by the work items; freed on the stream by release().
struct DeviceWork {
  DeviceAttentionTask* tasks = nullptr;
  WorkItem* items = nullptr;
  int64_t num_items = 0;
  void* block = nullptr;
};

void free_host_bytes(void* p) { delete static_cast<std::vector<unsigned char>*>(p); }

DeviceWork upload_work(const DeviceAttentionTask* tasks, size_t num_tasks, const std::vector<WorkItem>& items,
                       cudaStream_t stream) {
  const size_t task_bytes = num_tasks * sizeof(DeviceAttentionTask);
  const size_t item_offset = (task_bytes + 15) / 16 * 16;
  const size_t total = item_offset + items.size() * sizeof(WorkItem);
  // The staging copy lives until the stream has consumed it (freed by a host callback).
  auto* host = new std::vector<unsigned char>(total);
  std::memcpy(host->data(), tasks, task_bytes);
  std::memcpy(host->data() + item_offset, items.data(), items.size() * sizeof(WorkItem));
  DeviceWork work;
  cudaError_t err = cudaMallocAsync(&work.block, total, stream);
  if (err == cudaSuccess) err = cudaMemcpyAsync(work.block, host->data(), total, cudaMemcpyHostToDevice, stream);
  if (err == cudaSuccess) err = cudaLaunchHostFunc(stream, free_host_bytes, host);
  if (err != cudaSuccess) {
    cudaStreamSynchronize(stream);
    delete host;
    if (work.block != nullptr) cudaFree(work.block);
    check_cuda(err, "uploading the task list");
  }
  work.tasks = static_cast<DeviceAttentionTask*>(work.block);
  work.items = reinterpret_cast<WorkItem*>(static_cast<unsigned char*>(work.block) + item_offset);
  work.num_items = static_cast<int64_t>(items.size());
  return work;
}

void validate(const DeviceAttentionTask* tasks, size_t num_tasks, const DeviceAttentionDims& dims) {
  if (dims.head_dim != 64 && dims.head_dim != 128) {
    fail("CUDA attention: head_dim {} is not supported (64 or 128)", dims.head_dim);
  }
  if (dims.q_heads <= 0 || dims.kv_heads <= 0 || dims.q_heads % dims.kv_heads != 0) {
    fail("CUDA attention: q_heads {} is not a positive multiple of kv_heads {}", dims.q_heads, dims.kv_heads);
  }
  if (dims.q_heads > 65535) fail("CUDA attention: q_heads {} exceeds the grid's y limit", dims.q_heads);
  if (num_tasks > 0x7fffffffu) fail("CUDA attention: {} tasks exceed the 32-bit task index", num_tasks);
  for (size_t i = 0; i < num_tasks; ++i) {
    const auto& t = tasks[i];
    if (t.q0 < 0 || t.q1 < t.q0 || t.k0 < 0 || t.k1 < t.k0) {
      fail("CUDA attention: task {} has bad ranges q [{}, {}) k [{}, {})", i, t.q0, t.q1, t.k0, t.k1);
    }
  }
}

void check_aligned(const void* p, const char* name) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("CUDA attention: {} is not 16-byte aligned", name);
}

// Last key row (exclusive) that any of query rows [r0, r1) of task t can see (the contract's
// arithmetic, kernels/attention_task_math.h).
__host__ __device__ inline int64_t visible_key_end(const DeviceAttentionTask& t, int64_t r0, int64_t r1) {
  if (r1 <= r0) return t.k0;
  return t.k0 + kernels::task_math::visible_keys(r1 - 1 - t.q0, t.q_pos0 - t.k_pos0, t.k1 - t.k0, t.causal != 0);
}

// First query row of task t that can see key row `krow`.
__device__ inline int64_t first_query_seeing(const DeviceAttentionTask& t, int64_t krow) {
  return t.q0 + kernels::task_math::first_row_seeing(krow - t.k0, t.q_pos0 - t.k_pos0, t.q1 - t.q0, t.causal != 0);
}

// Sum over the four lanes of a row (every lane gets the same value, bit for bit).
__device__ inline float row_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// Copies rows [row0, row0 + kTile) of head `head` of a [rows, heads, D] bf16 tensor into a
// shared [kTile][D] tile, 16 bytes per access; rows at or past row_end become zeros.
template <int D>
__device__ inline void load_tile(__nv_bfloat162 (*tile)[D / 2], const __nv_bfloat16* src, int64_t row0,
                                 int64_t row_end, int64_t heads, int64_t head) {
  constexpr int kVecPerRow = D / 8;
  for (int idx = threadIdx.x; idx < kTile * kVecPerRow; idx += kThreads) {
    const int r = idx / kVecPerRow;
    const int c = idx % kVecPerRow;
    const int64_t row = row0 + r;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row < row_end) val = *reinterpret_cast<const uint4*>(src + (row * heads + head) * D + c * 8);
    reinterpret_cast<uint4*>(&tile[r][0])[c] = val;
  }
}

// Loads this lane's pairs of a row (pairs lane, lane+4, ...) as floats times `mul`.
template <int D>
__device__ inline void load_slice(float2 (&dst)[D / 8], const __nv_bfloat16* row_ptr, int lane, float mul) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(row_ptr);
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const float2 f = __bfloat1622float2(pairs[lane + kLanesPerRow * c]);
    dst[c] = make_float2(f.x * mul, f.y * mul);
  }
}

// Partial dot product of this lane's slice with row `r` of a shared tile.
template <int D>
__device__ inline float slice_dot(const float2 (&a)[D / 8], const __nv_bfloat162* row, int lane) {
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const float2 b = __bfloat1622float2(row[lane + kLanesPerRow * c]);
    acc = fmaf(a[c].x, b.x, acc);
    acc = fmaf(a[c].y, b.y, acc);
  }
  return acc;
}

// acc += w * row (this lane's slice).
template <int D>
__device__ inline void slice_axpy(float2 (&acc)[D / 8], float w, const __nv_bfloat162* row, int lane) {
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const float2 b = __bfloat1622float2(row[lane + kLanesPerRow * c]);
    acc[c].x = fmaf(w, b.x, acc[c].x);
    acc[c].y = fmaf(w, b.y, acc[c].y);
  }
}

// O [rows_q, q_heads, D], LSE [rows_q, q_heads]: grid (items, q_heads), kThreads threads.
template <int D>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(
    __nv_bfloat16* __restrict__ o, float* __restrict__ lse, const __nv_bfloat16* __restrict__ q,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const DeviceAttentionTask* __restrict__ tasks, const WorkItem* __restrict__ items, DeviceAttentionDims dims) {
  constexpr int NP = D / 8;  // bf16 pairs per lane
  __shared__ __align__(16) __nv_bfloat162 ks[kTile][D / 2];
  __shared__ __align__(16) __nv_bfloat162 vs[kTile][D / 2];

  const WorkItem item = items[blockIdx.x];
  const DeviceAttentionTask t = tasks[item.task];
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / (dims.q_heads / dims.kv_heads);
  const int lane = threadIdx.x % kLanesPerRow;
  const int64_t row = item.row0 + threadIdx.x / kLanesPerRow;
  const bool valid = row < t.q1;
  const int64_t qpos = t.q_pos0 + (row - t.q0);
  const int64_t tile_end = item.row0 + kTile < t.q1 ? item.row0 + kTile : t.q1;
  const int64_t kend = visible_key_end(t, item.row0, tile_end);

  float2 qf[NP];
  if (valid) {
    load_slice<D>(qf, q + (row * dims.q_heads + h) * D, lane, dims.softmax_scale * kLog2e);
  } else {
#pragma unroll
    for (int c = 0; c < NP; ++c) qf[c] = make_float2(0.f, 0.f);
  }
  float2 acc[NP];
#pragma unroll
  for (int c = 0; c < NP; ++c) acc[c] = make_float2(0.f, 0.f);
  float m = -INFINITY;  // running max, log2 domain
  float l = 0.f;        // running sum of exp2(s - m)

  for (int64_t kt = t.k0; kt < kend; kt += kTile) {
    __syncthreads();
    load_tile<D>(ks, k, kt, kend, dims.kv_heads, kvh);
    load_tile<D>(vs, v, kt, kend, dims.kv_heads, kvh);
    __syncthreads();
    const int nk = kend - kt < kTile ? static_cast<int>(kend - kt) : kTile;
    for (int c0 = 0; c0 < nk; c0 += kChunk) {
      float sc[kChunk];
      float cmax = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < kChunk; ++jj) {
        const int j = c0 + jj;
        const float s = row_sum(slice_dot<D>(qf, &ks[j][0], lane));
        const int64_t kpos = t.k_pos0 + (kt + j - t.k0);
        const bool visible = valid && j < nk && (!t.causal || kpos <= qpos);
        sc[jj] = visible ? s : -INFINITY;
        cmax = fmaxf(cmax, sc[jj]);
      }
      const float m_new = fmaxf(m, cmax);
      const float corr = m == -INFINITY ? 0.f : exp2f(m - m_new);
      l *= corr;
#pragma unroll
      for (int c = 0; c < NP; ++c) {
        acc[c].x *= corr;
        acc[c].y *= corr;
      }
#pragma unroll
      for (int jj = 0; jj < kChunk; ++jj) {
        const float p = sc[jj] == -INFINITY ? 0.f : exp2f(sc[jj] - m_new);
        l += p;
        slice_axpy<D>(acc, p, &vs[c0 + jj][0], lane);
      }
      m = m_new;
    }
  }

  if (!valid) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  auto* out = reinterpret_cast<__nv_bfloat162*>(o + (row * dims.q_heads + h) * D);
#pragma unroll
  for (int c = 0; c < NP; ++c) out[lane + kLanesPerRow * c] = __floats2bfloat162_rn(acc[c].x * inv, acc[c].y * inv);
  if (lane == 0) lse[row * dims.q_heads + h] = l > 0.f ? (m + log2f(l)) * kLn2 : -INFINITY;
}

// delta[row, h] = sum_d dO * O over the task rows of each item: grid (items, q_heads). With
// zero_dq (tasks share query rows) it also zeroes those rows of dQ for the accumulating dQ kernel;
// a row covered by several tasks gets the same delta from each.
template <int D>
__global__ void __launch_bounds__(kThreads) attention_delta_kernel(
    float* __restrict__ delta, float* __restrict__ dq, bool zero_dq, const __nv_bfloat16* __restrict__ dout,
    const __nv_bfloat16* __restrict__ o, const DeviceAttentionTask* __restrict__ tasks,
    const WorkItem* __restrict__ items, DeviceAttentionDims dims) {
  const WorkItem item = items[blockIdx.x];
  const DeviceAttentionTask t = tasks[item.task];
  const int64_t h = blockIdx.y;
  const int lane = threadIdx.x % kLanesPerRow;
  const int64_t row = item.row0 + threadIdx.x / kLanesPerRow;
  float part = 0.f;
  if (row < t.q1) {
    float2 dof[D / 8];
    load_slice<D>(dof, dout + (row * dims.q_heads + h) * D, lane, 1.f);
    part = slice_dot<D>(dof, reinterpret_cast<const __nv_bfloat162*>(o + (row * dims.q_heads + h) * D), lane);
  }
  part = row_sum(part);
  if (row < t.q1 && lane == 0) delta[row * dims.q_heads + h] = part;
  if (row < t.q1 && zero_dq) {
    auto* out = reinterpret_cast<float2*>(dq + (row * dims.q_heads + h) * D);
#pragma unroll
    for (int c = 0; c < D / 8; ++c) out[lane + kLanesPerRow * c] = make_float2(0.f, 0.f);
  }
}

// dQ [rows_q, q_heads, D] fp32: stored, or with accumulate (tasks share query rows; zeroed by
// the delta kernel) atomically added. Grid (query items, q_heads).
template <int D>
__global__ void __launch_bounds__(kThreads) attention_dq_kernel(
    float* __restrict__ dq, bool accumulate, const __nv_bfloat16* __restrict__ dout, const __nv_bfloat16* __restrict__ q,
    const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v, const float* __restrict__ lse,
    const float* __restrict__ delta, const DeviceAttentionTask* __restrict__ tasks,
    const WorkItem* __restrict__ items, DeviceAttentionDims dims) {
  constexpr int NP = D / 8;
  __shared__ __align__(16) __nv_bfloat162 ks[kTile][D / 2];
  __shared__ __align__(16) __nv_bfloat162 vs[kTile][D / 2];

  const WorkItem item = items[blockIdx.x];
  const DeviceAttentionTask t = tasks[item.task];
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / (dims.q_heads / dims.kv_heads);
  const int lane = threadIdx.x % kLanesPerRow;
  const int64_t row = item.row0 + threadIdx.x / kLanesPerRow;
  const bool valid = row < t.q1;
  const int64_t qpos = t.q_pos0 + (row - t.q0);
  const int64_t tile_end = item.row0 + kTile < t.q1 ? item.row0 + kTile : t.q1;
  const int64_t kend = visible_key_end(t, item.row0, tile_end);

  float2 qf[NP], dof[NP], acc[NP];
  float lse2 = -INFINITY, d_row = 0.f;
  if (valid) {
    load_slice<D>(qf, q + (row * dims.q_heads + h) * D, lane, dims.softmax_scale * kLog2e);
    load_slice<D>(dof, dout + (row * dims.q_heads + h) * D, lane, 1.f);
    lse2 = lse[row * dims.q_heads + h] * kLog2e;
    d_row = delta[row * dims.q_heads + h];
  } else {
#pragma unroll
    for (int c = 0; c < NP; ++c) qf[c] = dof[c] = make_float2(0.f, 0.f);
  }
#pragma unroll
  for (int c = 0; c < NP; ++c) acc[c] = make_float2(0.f, 0.f);
  const bool has_keys = lse2 != -INFINITY;

  for (int64_t kt = t.k0; kt < kend; kt += kTile) {
    __syncthreads();
    load_tile<D>(ks, k, kt, kend, dims.kv_heads, kvh);
    load_tile<D>(vs, v, kt, kend, dims.kv_heads, kvh);
    __syncthreads();
    const int nk = kend - kt < kTile ? static_cast<int>(kend - kt) : kTile;
#pragma unroll 4
    for (int j = 0; j < nk; ++j) {
      const float s = row_sum(slice_dot<D>(qf, &ks[j][0], lane));
      const float dp = row_sum(slice_dot<D>(dof, &vs[j][0], lane));
      const int64_t kpos = t.k_pos0 + (kt + j - t.k0);
      const bool visible = valid && has_keys && (!t.causal || kpos <= qpos);
      const float p = visible ? exp2f(s - lse2) : 0.f;
      slice_axpy<D>(acc, p * (dp - d_row), &ks[j][0], lane);
    }
  }

  if (!valid) return;
  float* dq_row = dq + (row * dims.q_heads + h) * D;
  if (accumulate) {
#pragma unroll
    for (int c = 0; c < NP; ++c) {
      const int d = 2 * (lane + kLanesPerRow * c);
      atomicAdd(dq_row + d, acc[c].x * dims.softmax_scale);
      atomicAdd(dq_row + d + 1, acc[c].y * dims.softmax_scale);
    }
  } else {
    auto* out = reinterpret_cast<float2*>(dq_row);
#pragma unroll
    for (int c = 0; c < NP; ++c) {
      out[lane + kLanesPerRow * c] = make_float2(acc[c].x * dims.softmax_scale, acc[c].y * dims.softmax_scale);
    }
  }
}

// dK, dV [rows_kv, kv_heads, D] fp32 (accumulated): grid (key items, q_heads).
template <int D>
__global__ void __launch_bounds__(kThreads) attention_dkv_kernel(
    float* __restrict__ dk, float* __restrict__ dv, const __nv_bfloat16* __restrict__ dout,
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ delta, const DeviceAttentionTask* __restrict__ tasks,
    const WorkItem* __restrict__ items, DeviceAttentionDims dims) {
  constexpr int NP = D / 8;
  __shared__ __align__(16) __nv_bfloat162 qs[kTile][D / 2];
  __shared__ __align__(16) __nv_bfloat162 dos[kTile][D / 2];
  __shared__ float lse2_s[kTile];
  __shared__ float delta_s[kTile];

  const WorkItem item = items[blockIdx.x];
  const DeviceAttentionTask t = tasks[item.task];
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / (dims.q_heads / dims.kv_heads);
  const int lane = threadIdx.x % kLanesPerRow;
  const int64_t krow = item.row0 + threadIdx.x / kLanesPerRow;
  const bool valid = krow < t.k1;
  const int64_t kpos = t.k_pos0 + (krow - t.k0);

  float2 kf[NP], vf[NP], dkf[NP], dvf[NP];
  if (valid) {
    load_slice<D>(kf, k + (krow * dims.kv_heads + kvh) * D, lane, dims.softmax_scale * kLog2e);
    load_slice<D>(vf, v + (krow * dims.kv_heads + kvh) * D, lane, 1.f);
  } else {
#pragma unroll
    for (int c = 0; c < NP; ++c) kf[c] = vf[c] = make_float2(0.f, 0.f);
  }
#pragma unroll
  for (int c = 0; c < NP; ++c) dkf[c] = dvf[c] = make_float2(0.f, 0.f);

  for (int64_t qt = first_query_seeing(t, item.row0); qt < t.q1; qt += kTile) {
    __syncthreads();
    load_tile<D>(qs, q, qt, t.q1, dims.q_heads, h);
    load_tile<D>(dos, dout, qt, t.q1, dims.q_heads, h);
    if (threadIdx.x < kTile) {
      const int64_t r = qt + threadIdx.x;
      lse2_s[threadIdx.x] = r < t.q1 ? lse[r * dims.q_heads + h] * kLog2e : -INFINITY;
      delta_s[threadIdx.x] = r < t.q1 ? delta[r * dims.q_heads + h] : 0.f;
    }
    __syncthreads();
    const int nq = t.q1 - qt < kTile ? static_cast<int>(t.q1 - qt) : kTile;
#pragma unroll 4
    for (int i = 0; i < nq; ++i) {
      const float s = row_sum(slice_dot<D>(kf, &qs[i][0], lane));
      const float dp = row_sum(slice_dot<D>(vf, &dos[i][0], lane));
      const int64_t qpos = t.q_pos0 + (qt + i - t.q0);
      const float lse2 = lse2_s[i];
      const bool visible = valid && lse2 != -INFINITY && (!t.causal || kpos <= qpos);
      const float p = visible ? exp2f(s - lse2) : 0.f;
      slice_axpy<D>(dvf, p, &dos[i][0], lane);
      slice_axpy<D>(dkf, p * (dp - delta_s[i]), &qs[i][0], lane);
    }
  }

  if (!valid) return;
  float* dk_row = dk + (krow * dims.kv_heads + kvh) * D;
  float* dv_row = dv + (krow * dims.kv_heads + kvh) * D;
#pragma unroll
  for (int c = 0; c < NP; ++c) {
    const int d = 2 * (lane + kLanesPerRow * c);
    atomicAdd(dk_row + d, dkf[c].x * dims.softmax_scale);
    atomicAdd(dk_row + d + 1, dkf[c].y * dims.softmax_scale);
    atomicAdd(dv_row + d, dvf[c].x);
    atomicAdd(dv_row + d + 1, dvf[c].y);
  }
}

// Tiles of kTile query rows of every task.
std::vector<WorkItem> query_items(const DeviceAttentionTask* tasks, size_t num_tasks, int64_t* max_q1) {
  std::vector<WorkItem> items;
  *max_q1 = 0;
  for (size_t i = 0; i < num_tasks; ++i) {
    for (int64_t r = tasks[i].q0; r < tasks[i].q1; r += kTile) items.push_back({static_cast<int32_t>(i), 0, r});
    if (tasks[i].q1 > *max_q1) *max_q1 = tasks[i].q1;
  }
  return items;
}

// Tiles of kTile key rows of every task, up to the last key some query row can see.
std::vector<WorkItem> key_items(const DeviceAttentionTask* tasks, size_t num_tasks) {
  std::vector<WorkItem> items;
  for (size_t i = 0; i < num_tasks; ++i) {
    const int64_t kend = visible_key_end(tasks[i], tasks[i].q0, tasks[i].q1);
    for (int64_t r = tasks[i].k0; r < kend; r += kTile) items.push_back({static_cast<int32_t>(i), 0, r});
  }
  return items;
}

// Whether two tasks share a query row (split keys): dQ then accumulates.
bool queries_overlap(const DeviceAttentionTask* tasks, size_t num_tasks) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (size_t i = 0; i < num_tasks; ++i) {
    if (tasks[i].q1 > tasks[i].q0) ranges.emplace_back(tasks[i].q0, tasks[i].q1);
  }
  std::sort(ranges.begin(), ranges.end());
  int64_t end = 0;
  for (const auto& [q0, q1] : ranges) {
    if (q0 < end) return true;
    end = std::max(end, q1);
  }
  return false;
}

dim3 grid_of(int64_t num_items, const DeviceAttentionDims& dims) {
  if (num_items > 0x7fffffff) fail("CUDA attention: {} work items exceed the grid", num_items);
  return dim3(static_cast<unsigned>(num_items), static_cast<unsigned>(dims.q_heads));
}

template <int D>
void launch_forward(__nv_bfloat16* o, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                    const __nv_bfloat16* v, const DeviceWork& work, const DeviceAttentionDims& dims,
                    cudaStream_t stream) {
  attention_forward_kernel<D><<<grid_of(work.num_items, dims), kThreads, 0, stream>>>(o, lse, q, k, v, work.tasks,
                                                                                      work.items, dims);
}

template <int D>
void launch_backward(float* dq, float* dk, float* dv, const __nv_bfloat16* dout, const __nv_bfloat16* q,
                     const __nv_bfloat16* k, const __nv_bfloat16* v, const __nv_bfloat16* o, const float* lse,
                     float* delta, bool shared_queries, const DeviceWork& qwork, const DeviceWork& kwork, const DeviceAttentionDims& dims,
                     cudaStream_t stream) {
  if (qwork.num_items > 0) {
    const dim3 grid = grid_of(qwork.num_items, dims);
    attention_delta_kernel<D><<<grid, kThreads, 0, stream>>>(delta, dq, shared_queries, dout, o, qwork.tasks,
                                                             qwork.items, dims);
    attention_dq_kernel<D><<<grid, kThreads, 0, stream>>>(dq, shared_queries, dout, q, k, v, lse, delta,
                                                          qwork.tasks, qwork.items, dims);
  }
  if (kwork.num_items > 0) {
    attention_dkv_kernel<D><<<grid_of(kwork.num_items, dims), kThreads, 0, stream>>>(
        dk, dv, dout, q, k, v, lse, delta, kwork.tasks, kwork.items, dims);
  }
}

}  // namespace

void attention_forward_tasks_device(__nv_bfloat16* o, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                                    const __nv_bfloat16* v, const DeviceAttentionTask* tasks, size_t num_tasks,
                                    const DeviceAttentionDims& dims, cudaStream_t stream) {
  validate(tasks, num_tasks, dims);
  check_aligned(o, "O");
  check_aligned(q, "Q");
  check_aligned(k, "K");
  check_aligned(v, "V");
  int64_t max_q1 = 0;
  const std::vector<WorkItem> items = query_items(tasks, num_tasks, &max_q1);
  if (items.empty()) return;
  const DeviceWork work = upload_work(tasks, num_tasks, items, stream);
  if (dims.head_dim == 64) {
    launch_forward<64>(o, lse, q, k, v, work, dims, stream);
  } else {
    launch_forward<128>(o, lse, q, k, v, work, dims, stream);
  }
  const cudaError_t launch_err = cudaGetLastError();
  cudaFreeAsync(work.block, stream);
  check_cuda(launch_err, "forward kernel launch");
}

void attention_backward_tasks_device(float* dq, float* dk, float* dv, const __nv_bfloat16* dout,
                                     const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                     const __nv_bfloat16* o, const float* lse, const DeviceAttentionTask* tasks,
                                     size_t num_tasks, const DeviceAttentionDims& dims, cudaStream_t stream) {
  validate(tasks, num_tasks, dims);
  check_aligned(dq, "dQ");
  check_aligned(dk, "dK");
  check_aligned(dv, "dV");
  check_aligned(dout, "dO");
  check_aligned(q, "Q");
  check_aligned(k, "K");
  check_aligned(v, "V");
  check_aligned(o, "O");
  int64_t max_q1 = 0;
  const std::vector<WorkItem> qitems = query_items(tasks, num_tasks, &max_q1);
  const std::vector<WorkItem> kitems = key_items(tasks, num_tasks);
  if (qitems.empty()) return;
  const bool shared_queries = queries_overlap(tasks, num_tasks);
  const DeviceWork qwork = upload_work(tasks, num_tasks, qitems, stream);
  const DeviceWork kwork = upload_work(tasks, num_tasks, kitems, stream);
  float* delta = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&delta),
                                    static_cast<size_t>(max_q1 * dims.q_heads) * sizeof(float), stream);
  if (err == cudaSuccess) {
    if (dims.head_dim == 64) {
      launch_backward<64>(dq, dk, dv, dout, q, k, v, o, lse, delta, shared_queries, qwork, kwork, dims, stream);
    } else {
      launch_backward<128>(dq, dk, dv, dout, q, k, v, o, lse, delta, shared_queries, qwork, kwork, dims, stream);
    }
    err = cudaGetLastError();
    cudaFreeAsync(delta, stream);
  }
  cudaFreeAsync(qwork.block, stream);
  cudaFreeAsync(kwork.block, stream);
  check_cuda(err, "backward kernels");
}

}  // namespace cadtrain::cuda
