// Backend: the compute operations the model is written in. The CPU backend (kernels/cpu/) and the
// CUDA backend (kernels/cuda/) implement the same interface; trainer code holds a Backend& and
// never names either. Interface version 1.
//
// Conventions: row-major; N = tokens of one packed micro-batch; C = model width; every pointer
// is backend memory of the stated shape. Linear weights are stored [out, in] (as PyTorch does),
// so y = x W^T. A "+=" in a comment means the op accumulates into its output (gradients of
// weights always accumulate, so several micro-batches can sum into one gradient buffer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace cadtrain::kernels {

// Optional top-K distillation term of the fused LM head (DESIGN section 7, tempered decoupled
// top-K): per row, the teacher's K token ids and log-probabilities normalized over the full
// vocabulary. The row's loss becomes CE + weight * L_KD (rows with mask 0 have neither).
struct TopKDistillArgs {
  const int32_t* ids = nullptr;        // [N, K] distinct ids in [0, V)
  const float* logprobs = nullptr;     // [N, K]
  int64_t k = 0;
  float weight = 0;                    // lambda
  float temperature = 1;               // tau of the conditional term (the mass term is untempered)
  bool tau_squared = false;            // multiply the conditional term by tau^2
  float* row_kd = nullptr;             // [N] optional per-row L_KD (0 where mask is 0)
};

// Arguments of the fused LM head + cross-entropy (see Backend::lm_head_cross_entropy).
struct LmHeadLossArgs {
  const float* h = nullptr;         // [N, C] final hidden states (after the final norm)
  const float* w = nullptr;         // [V, C] LM head weight
  const uint32_t* targets = nullptr;  // [N] next-token ids
  const float* mask = nullptr;      // [N] loss weight per row (0 = ignored); nullptr = all 1
  int64_t n = 0, c = 0, v = 0;
  // Gradients (both nullptr for evaluation): dh = grad_scale * d(sum of masked losses)/dh,
  // dw += the same for the weight.
  float* dh = nullptr;              // [N, C], overwritten
  float* dw = nullptr;              // [V, C], +=
  float grad_scale = 1.0f;
  // Optional per-row outputs: loss (0 where mask is 0) and the argmax token.
  float* row_loss = nullptr;        // [N]
  uint32_t* row_argmax = nullptr;   // [N]
  const TopKDistillArgs* distill = nullptr;  // nullptr: cross-entropy only
};

struct LmHeadLossResult {
  double loss_sum = 0;   // sum over rows of mask * loss (cross-entropy only)
  double weight_sum = 0; // sum of mask
  double kd_sum = 0;     // sum over rows of mask * L_KD (0 without distill); gradients use
                         // loss_sum + weight * kd_sum
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Memory. Buffers are zero-initialised.
  virtual float* alloc(size_t count) = 0;
  virtual void free(float* p) = 0;
  virtual void zero(float* p, size_t count) = 0;
  virtual void copy(float* dst, const float* src, size_t count) = 0;

  // y[N,O] = x[N,I] W[O,I]^T
  virtual void linear_forward(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out) = 0;
  // dx[N,I] = dy W (or += when accumulate_dx), dw[O,I] += dy^T x. dx may be nullptr.
  virtual void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                               int64_t in, int64_t out, bool accumulate_dx) = 0;

  // out[N,C] = table[tokens[i]]; dtable[tokens[i]] += dout[i]
  virtual void embedding_forward(float* out, const uint32_t* tokens, const float* table, int64_t n, int64_t c) = 0;
  virtual void embedding_backward(float* dtable, const float* dout, const uint32_t* tokens, int64_t n,
                                  int64_t c) = 0;

  // y = x / rms(x) * w over rows of length C; rstd[rows] saved for the backward.
  virtual void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t c,
                               float eps) = 0;
  // dx = d/dx (overwritten), dw += d/dw
  virtual void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                                const float* rstd, int64_t rows, int64_t c) = 0;

  // Rotates pairs (x[2i], x[2i+1]) of every head of x[N, heads, D] in place by angle
  // pos * theta^(-2i/D); the backward rotates the gradient back (the transpose).
  virtual void rope_forward(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta) = 0;
  virtual void rope_backward(float* dx, const int32_t* pos, int64_t n, int64_t heads, int64_t d, float theta) = 0;

  // h = silu(gate) * up over count elements; the backward overwrites dgate and dup.
  virtual void swiglu_forward(float* h, const float* gate, const float* up, size_t count) = 0;
  virtual void swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate, const float* up,
                               size_t count) = 0;

  // out = a * b elementwise; da = dout * b, db = dout * a (overwritten).
  virtual void mul_forward(float* out, const float* a, const float* b, size_t count) = 0;
  virtual void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                            size_t count) = 0;

  // Causal depthwise convolution along tokens, per sequence (cu_seqlens[n_seqs+1] token offsets):
  // z[t,c] = sum_j w[c,j] * y[t-K+1+j, c], zero before the sequence start. w is [C, K].
  virtual void short_conv_forward(float* z, const float* y, const float* w, const int32_t* cu_seqlens,
                                  int64_t n_seqs, int64_t c, int64_t k) = 0;
  // dy overwritten, dw +=
  virtual void short_conv_backward(float* dy, float* dw, const float* dz, const float* y, const float* w,
                                   const int32_t* cu_seqlens, int64_t n_seqs, int64_t c, int64_t k) = 0;

  // y += x
  virtual void accumulate(float* y, const float* x, size_t count) = 0;
  // x *= s
  virtual void scale(float* x, float s, size_t count) = 0;
  // sum of squares in double; NaN/Inf propagate so the caller can name the tensor.
  virtual double sum_squares(const float* x, size_t count) = 0;

  // Fused, vocabulary-chunked LM head and cross-entropy: the [N, V] logits are never held whole.
  virtual LmHeadLossResult lm_head_cross_entropy(const LmHeadLossArgs& args) = 0;

  // AdamW on one tensor (decoupled weight decay; bias-corrected with step >= 1):
  // m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p)
  virtual void adamw_step(float* p, const float* g, float* m, float* v, size_t count, float lr, float beta1,
                          float beta2, float eps, float weight_decay, int64_t step) = 0;
};

// The CPU backend: OpenBLAS sgemm and OpenMP-parallel, vectorised elementwise kernels.
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace cadtrain::kernels
