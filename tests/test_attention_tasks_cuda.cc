// The CUDA core-attention task kernels against the CPU task kernels (kernels/attention_tasks.h),
// both fed the same bf16-rounded inputs (as float on the CPU). Tasks cover a length-1 document,
// lengths that are not multiples of the 64-row tile, a mid-document query shard attending to its
// causal prefix, a non-causal task, two tasks sharing key rows, a task whose queries see no key,
// and (backward) a document whose keys are split into two tasks that sum into dQ; GQA 8:1 at
// head_dim 64 and 2:1 at 128. Rows outside every task hold a sentinel that must survive.
// Tolerances (per element): LSE 1e-3 + 1e-4|ref|; O (bf16 output) 2e-3 + 8e-3|ref|; dQ, dK, dV
// (fp32) 2e-3 * max|ref| + 1e-3|ref|. Without a GPU the comparisons skip, saying so.
// DISABLED_Timing prints forward/backward GFLOP/s (bench/cuda_attention_check.sh runs it).
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/attention_tasks.h"
#include "kernels/cuda/attention_tasks_cuda.h"

using cadtrain::kernels::AttentionDims;
using cadtrain::kernels::AttentionTask;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kSentinel = 0.5f;  // exact in bf16

// Why the GPU comparisons cannot run here; empty when a device is present.
std::string no_gpu_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
  if (count == 0) return "no CUDA device";
  return {};
}

#define CUDA_OK(expr)                                                               \
  do {                                                                              \
    const cudaError_t err_ = (expr);                                                \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_);      \
  } while (0)

// A device buffer of n elements of T, freed on destruction.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    if (cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) {
      throw cadtrain::Error("cudaMalloc failed");
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  void upload(const std::vector<T>& h) const {
    if (cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess) {
      throw cadtrain::Error("cudaMemcpy to device failed");
    }
  }
  std::vector<T> download() const {
    std::vector<T> h(n);
    if (cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) {
      throw cadtrain::Error("cudaMemcpy to host failed");
    }
    return h;
  }
};

// bf16-rounded random normals times `amp`, as bf16 for the GPU and as float for the CPU.
struct Bf16Tensor {
  std::vector<__nv_bfloat16> bf;
  std::vector<float> f;
};

Bf16Tensor random_bf16(size_t n, float amp, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.f, 1.f);
  Bf16Tensor t;
  t.bf.resize(n);
  t.f.resize(n);
  for (size_t i = 0; i < n; ++i) {
    t.bf[i] = __float2bfloat16(amp * dist(rng));
    t.f[i] = __bfloat162float(t.bf[i]);
  }
  return t;
}

std::vector<float> to_float(const std::vector<__nv_bfloat16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = __bfloat162float(x[i]);
  return out;
}

float max_abs(const std::vector<float>& x) {
  float m = 0.f;
  for (float v : x) {
    if (std::isfinite(v)) m = std::max(m, std::fabs(v));
  }
  return m;
}

// Per element |got - ref| <= atol + rtol |ref|; infinities must match exactly.
void expect_close(const std::vector<float>& got, const std::vector<float>& ref, float atol, float rtol,
                  const char* name) {
  ASSERT_EQ(got.size(), ref.size()) << name;
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const bool ok = std::isinf(ref[i]) ? got[i] == ref[i]
                                       : std::fabs(got[i] - ref[i]) <= atol + rtol * std::fabs(ref[i]);
    if (!ok && ++bad <= 5) ADD_FAILURE() << name << "[" << i << "]: gpu " << got[i] << " cpu " << ref[i];
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << ref.size() << " elements out of tolerance";
}

struct Case {
  int64_t rows = 0;
  std::vector<AttentionTask> forward_tasks;   // disjoint query rows
  std::vector<AttentionTask> backward_tasks;  // the same work, one document's keys split in two
};

Case varied_case() {
  Case c;
  c.rows = 620;
  c.forward_tasks = {
      {0, 1, 0, 1, 0, 0, true},              // a length-1 document
      {1, 101, 1, 101, 0, 0, true},          // 100 rows: not a multiple of the tile
      {201, 301, 101, 301, 100, 0, true},    // query shard (positions 100..199) over its causal prefix
      {301, 371, 301, 371, 0, 0, false},     // non-causal
      {371, 400, 301, 371, 0, 0, false},     // shares key rows with the task above
      {400, 410, 410, 420, 0, 50, true},     // keys all in the queries' future: O = 0, LSE = -inf
      {420, 620, 420, 620, 0, 0, true},      // 200 rows: several tiles, a partial last one
  };
  c.backward_tasks = c.forward_tasks;
  c.backward_tasks.back() = {420, 620, 420, 520, 0, 0, true};
  c.backward_tasks.push_back({420, 620, 520, 620, 0, 100, true});
  return c;
}

void run_against_cpu(int64_t q_heads, int64_t kv_heads, int64_t d, uint32_t seed) {
  const std::string reason = no_gpu_reason();
  if (!reason.empty()) GTEST_SKIP() << "no GPU, CUDA attention not compared with the CPU: " << reason;
  const Case c = varied_case();
  const AttentionDims dims{q_heads, kv_heads, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
  const size_t nq = static_cast<size_t>(c.rows * q_heads * d);
  const size_t nkv = static_cast<size_t>(c.rows * kv_heads * d);
  const size_t nlse = static_cast<size_t>(c.rows * q_heads);
  std::mt19937 rng(seed);
  const Bf16Tensor q = random_bf16(nq, 2.f, rng), k = random_bf16(nkv, 1.f, rng), v = random_bf16(nkv, 1.f, rng);
  const Bf16Tensor dout = random_bf16(nq, 1.f, rng);

  // Forward.
  std::vector<float> o_ref(nq, kSentinel), lse_ref(nlse, kSentinel);
  cadtrain::kernels::attention_forward_tasks(o_ref.data(), lse_ref.data(), q.f.data(), k.f.data(), v.f.data(),
                                             c.forward_tasks, dims);
  DeviceBuffer<__nv_bfloat16> dq_in(nq), dk_in(nkv), dv_in(nkv), d_o(nq), d_dout(nq);
  DeviceBuffer<float> d_lse(nlse), d_dq(nq), d_dk(nkv), d_dv(nkv);
  dq_in.upload(q.bf);
  dk_in.upload(k.bf);
  dv_in.upload(v.bf);
  d_dout.upload(dout.bf);
  d_o.upload(std::vector<__nv_bfloat16>(nq, __float2bfloat16(kSentinel)));
  d_lse.upload(std::vector<float>(nlse, kSentinel));
  cadtrain::cuda::attention_forward_tasks_cuda(d_o.ptr, d_lse.ptr, dq_in.ptr, dk_in.ptr, dv_in.ptr, c.forward_tasks,
                                               dims, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> o_gpu = to_float(d_o.download());
  const std::vector<float> lse_gpu = d_lse.download();
  expect_close(lse_gpu, lse_ref, 1e-3f, 1e-4f, "LSE");
  expect_close(o_gpu, o_ref, 2e-3f, 8e-3f, "O");

  // Backward, both sides given the GPU's O (bf16) and LSE so that only the backward is compared.
  std::vector<float> dq_ref(nq, kSentinel), dk_ref(nkv, 0.f), dv_ref(nkv, 0.f);
  cadtrain::kernels::attention_backward_tasks(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.f.data(),
                                              q.f.data(), k.f.data(), v.f.data(), o_gpu.data(), lse_gpu.data(),
                                              c.backward_tasks, dims);
  d_dq.upload(std::vector<float>(nq, kSentinel));
  CUDA_OK(cudaMemset(d_dk.ptr, 0, nkv * sizeof(float)));
  CUDA_OK(cudaMemset(d_dv.ptr, 0, nkv * sizeof(float)));
  cadtrain::cuda::attention_backward_tasks_cuda(d_dq.ptr, d_dk.ptr, d_dv.ptr, d_dout.ptr, dq_in.ptr, dk_in.ptr,
                                                dv_in.ptr, d_o.ptr, d_lse.ptr, c.backward_tasks, dims, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  expect_close(d_dq.download(), dq_ref, 2e-3f * max_abs(dq_ref), 1e-3f, "dQ");
  expect_close(d_dk.download(), dk_ref, 2e-3f * max_abs(dk_ref), 1e-3f, "dK");
  expect_close(d_dv.download(), dv_ref, 2e-3f * max_abs(dv_ref), 1e-3f, "dV");
}

}  // namespace

TEST(AttentionTasksCuda, UnsupportedHeadDimThrows) {
  // Checked before any device work, so this runs without a GPU.
  const std::vector<AttentionTask> tasks = {{0, 4, 0, 4, 0, 0, true}};
  const AttentionDims dims{2, 1, 96, 0.1f};
  EXPECT_THROW(cadtrain::cuda::attention_forward_tasks_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, tasks,
                                                             dims, nullptr),
               cadtrain::Error);
}

TEST(AttentionTasksCuda, MatchesCpuHeadDim64Gqa8) { run_against_cpu(8, 1, 64, 1234); }

TEST(AttentionTasksCuda, MatchesCpuHeadDim128Gqa2) { run_against_cpu(4, 2, 128, 5678); }

// Forward and backward GFLOP/s on causal documents (DESIGN section 3: forward 4 * pairs * d * h_q,
// backward 2.5x), 16K tokens per call packed as 4K documents or one 16K document.
TEST(AttentionTasksCuda, DISABLED_Timing) {
  const std::string reason = no_gpu_reason();
  if (!reason.empty()) GTEST_SKIP() << "no GPU: " << reason;
  constexpr int64_t kTokens = 16384, kQHeads = 16, kKvHeads = 4;
  std::printf("| d | doc | fwd ms | fwd GFLOP/s | bwd ms | bwd GFLOP/s |\n|---|---|---|---|---|---|\n");
  for (int64_t d : {64, 128}) {
    for (int64_t doc : {4096, 16384}) {
      std::vector<AttentionTask> tasks;
      uint64_t pairs = 0;
      for (int64_t r = 0; r < kTokens; r += doc) {
        tasks.push_back({r, r + doc, r, r + doc, 0, 0, true});
        pairs += cadtrain::kernels::task_pairs(tasks.back());
      }
      const AttentionDims dims{kQHeads, kKvHeads, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
      const size_t nq = static_cast<size_t>(kTokens * kQHeads * d), nkv = static_cast<size_t>(kTokens * kKvHeads * d);
      std::mt19937 rng(7);
      DeviceBuffer<__nv_bfloat16> q(nq), k(nkv), v(nkv), o(nq), dout(nq);
      DeviceBuffer<float> lse(static_cast<size_t>(kTokens * kQHeads)), dq(nq), dk(nkv), dv(nkv);
      q.upload(random_bf16(nq, 1.f, rng).bf);
      k.upload(random_bf16(nkv, 1.f, rng).bf);
      v.upload(random_bf16(nkv, 1.f, rng).bf);
      dout.upload(random_bf16(nq, 1.f, rng).bf);
      cudaEvent_t start, stop;
      CUDA_OK(cudaEventCreate(&start));
      CUDA_OK(cudaEventCreate(&stop));
      auto time_ms = [&](auto&& fn) {
        for (int i = 0; i < 2; ++i) fn();
        constexpr int kIters = 5;
        cudaEventRecord(start);
        for (int i = 0; i < kIters; ++i) fn();
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        float ms = 0.f;
        cudaEventElapsedTime(&ms, start, stop);
        return ms / kIters;
      };
      const float fwd_ms = time_ms([&] {
        cadtrain::cuda::attention_forward_tasks_cuda(o.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, tasks, dims, nullptr);
      });
      const float bwd_ms = time_ms([&] {
        cudaMemsetAsync(dk.ptr, 0, nkv * sizeof(float));
        cudaMemsetAsync(dv.ptr, 0, nkv * sizeof(float));
        cadtrain::cuda::attention_backward_tasks_cuda(dq.ptr, dk.ptr, dv.ptr, dout.ptr, q.ptr, k.ptr, v.ptr, o.ptr,
                                                      lse.ptr, tasks, dims, nullptr);
      });
      CUDA_OK(cudaDeviceSynchronize());
      CUDA_OK(cudaEventDestroy(start));
      CUDA_OK(cudaEventDestroy(stop));
      const double fwd_flop = 4.0 * static_cast<double>(pairs) * static_cast<double>(d * kQHeads);
      std::printf("| %lld | %lld | %.3f | %.1f | %.3f | %.1f |\n", static_cast<long long>(d),
                  static_cast<long long>(doc), fwd_ms, fwd_flop / (fwd_ms * 1e6), bwd_ms,
                  2.5 * fwd_flop / (bwd_ms * 1e6));
    }
  }
}
