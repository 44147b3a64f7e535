// Model: the Llama-style decoder (optionally with LFM2-style short-convolution layers) with a
// hand-written forward and backward over one packed micro-batch. Compute goes through a
// kernels::Backend and core attention through a kernels::CoreAttention; the model knows neither
// which backend nor where attention runs.
//
//   x = embed(tokens)
//   per layer:  x = x + mixer(rmsnorm(x))     mixer: GQA attention with RoPE, or gated short conv
//               x = x + swiglu_mlp(rmsnorm(x))
//   loss = cross_entropy(rmsnorm(x) W_head^T, targets)   (fused, chunked; never [N, V] logits)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "configs/cadtrain.pb.h"
#include "trainer/model_dims.h"
#include "trainer/parameters.h"

namespace cadtrain::kernels {
class Backend;
class CoreAttention;
struct TopKDistillArgs;
}  // namespace cadtrain::kernels

namespace cadtrain::trainer {

class GradientSync;

// One micro-batch, host memory (see data::MicroBatch for the meaning of each array).
struct Batch {
  int64_t n = 0;
  const uint32_t* tokens = nullptr;
  const uint32_t* targets = nullptr;
  const float* loss_mask = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* cu_seqlens = nullptr;  // [n_seqs + 1]
  int64_t n_seqs = 0;
  const uint64_t* doc_ids = nullptr;    // [n_seqs] document of each sequence; nullptr: not known
  // Distillation rows for the LM head, asked for only once the layers have run (so a background
  // read overlaps them); empty or returning nullptr: cross-entropy only.
  std::function<const kernels::TopKDistillArgs*()> distill;
};

struct LossSum {
  double loss_sum = 0;    // sum of masked token losses
  double weight_sum = 0;  // sum of the loss mask
  double kd_sum = 0;      // sum of masked distillation losses (0 without distillation)
};

// Seconds spent per phase since the last reset (the backend is synchronous on CPU).
struct PhaseTimes {
  double forward = 0, backward = 0, core_attention = 0, loss = 0;
};

class Model {
 public:
  // max_tokens bounds the micro-batch size; activations are allocated once for it.
  Model(const config::ModelConfig& cfg, int64_t max_tokens, kernels::Backend& backend,
        kernels::CoreAttention& attention);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelDims& dims() const;
  ParameterSet& params();
  kernels::Backend& backend();
  // Deterministic initialisation from seed (normal(0, init_std) matrices, residual outputs scaled
  // by 1/sqrt(2 n_layers), norms 1).
  void init_weights(uint64_t seed);

  // Forward and backward of one micro-batch. Gradients of grad_scale * (sum of masked token
  // losses) accumulate into params().grads(). With grad_sync (pass it for the last micro-batch of
  // a step only), each group of parameters is announced to it as soon as its gradient is final
  // (order and contract in trainer/grad_sync.h).
  LossSum forward_backward(const Batch& batch, float grad_scale, GradientSync* grad_sync = nullptr);
  // Forward only; row_loss and row_argmax ([n], optional) receive per-token results.
  LossSum evaluate(const Batch& batch, float* row_loss, uint32_t* row_argmax);

  // Forward only, materialising all logits [n, vocab] (tests, parity checks, small models).
  void logits(const Batch& batch, float* out);

  // Runs every layer's stages on `count` parts of near-equal rows (nano-batches) instead of one,
  // so that a CoreAttention that overlaps can hide one part's attention behind the other's
  // linear layers (ping-pong). Same loss and gradients up to float rounding; 1 by default.
  void set_nano_batches(int count);

  const PhaseTimes& times() const;
  void reset_times();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cadtrain::trainer
