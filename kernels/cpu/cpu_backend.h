// CpuBackend: Backend on OpenBLAS sgemm (matmuls) and OpenMP + SIMD loops (everything else).
// Internal to kernels/: trainer code reaches it through make_cpu_backend(); tests and benchmarks
// construct it directly to choose the options. The ops are defined in one file per concern:
//   cpu_backend.cc      memory, registration        cpu_linear.cc       linear, embedding
//   cpu_norm_rope.cc    rmsnorm, rope               cpu_elementwise.cc  swiglu, mul, accumulate,
//   cpu_short_conv.cc   short_conv                                      scale, sum_squares, adamw
//   cpu_lm_head_loss.cc lm_head_cross_entropy
// Outputs must not alias inputs unless the op says so (rope works in place).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/backend.h"

namespace cadtrain::kernels::cpu {

struct CpuBackendOptions {
  // The fused LM head loss handles this many rows at a time; a block's [rows, V] logits are its
  // only vocabulary-sized buffer. More rows make the dw update (dw += dlogits^T h, which reads and
  // writes all of dw) rarer; fewer keep the buffer small. The rows are also capped so that the
  // buffer stays within lm_head_block_bytes (large vocabularies get smaller blocks).
  int64_t lm_head_block_rows = 256;
  size_t lm_head_block_bytes = size_t{64} << 20;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options = {});
  std::string name() const override;

  float* alloc(size_t count) override;
  void free(float* p) override;
  void zero(float* p, size_t count) override;
  void copy(float* dst, const float* src, size_t count) override;

  void linear_forward(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out) override;
  void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                       int64_t in, int64_t out, bool accumulate_dx) override;

  void embedding_forward(float* out, const uint32_t* tokens, const float* table, int64_t n, int64_t c) override;
  void embedding_backward(float* dtable, const float* dout, const uint32_t* tokens, int64_t n,
                          int64_t c) override;

  void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t c,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                        int64_t rows, int64_t c) override;

  void rope_forward(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta) override;
  void rope_backward(float* dx, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta) override;

  void swiglu_forward(float* h, const float* gate, const float* up, size_t count) override;
  void swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate, const float* up,
                       size_t count) override;

  void mul_forward(float* out, const float* a, const float* b, size_t count) override;
  void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                    size_t count) override;

  void short_conv_forward(float* z, const float* y, const float* w, const int32_t* cu_seqlens, int64_t n_seqs,
                          int64_t c, int64_t k) override;
  void short_conv_backward(float* dy, float* dw, const float* dz, const float* y, const float* w,
                           const int32_t* cu_seqlens, int64_t n_seqs, int64_t c, int64_t k) override;

  void accumulate(float* y, const float* x, size_t count) override;
  void scale(float* x, float s, size_t count) override;
  double sum_squares(const float* x, size_t count) override;

  LmHeadLossResult lm_head_cross_entropy(const LmHeadLossArgs& args) override;

  void adamw_step(float* p, const float* g, float* m, float* v, size_t count, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int64_t step) override;

 private:
  CpuBackendOptions options_;
};

}  // namespace cadtrain::kernels::cpu
