// Internal to trainer/: the model's buffers and the per-stage forward/backward functions that
// model.cc strings together. Each stage reads its inputs from LayerActs and writes its outputs
// there, so that "saved" and "recomputed" activations are the same code on different buffers.
//
// A layer runs in three stages, each on the rows of one part (nano-batch) of the micro-batch:
//   mixer_pre    rmsnorm, Q/K/V projections, qk-norm, RoPE    (conv: rmsnorm, in-projection, B*x)
//   mixer_core   core attention through kernels::CoreAttention  (conv: the short convolution)
//   layer_post   output projection + residual, then the MLP      (conv: C*z, out-projection, ...)
// and the backward mirrors them (post_backward, core_backward, pre_backward). The short
// convolution reads rows of earlier parts, so its core stage runs once over all rows, when the
// last part's pre stage (forward) or post_backward (backward) is done.
#pragma once

#include <vector>

#include "common/clock.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "trainer/grad_sync.h"
#include "trainer/model.h"

namespace cadtrain::trainer {

// Indices into the ParameterSet of one layer's weights (unused ones stay SIZE_MAX).
struct LayerWeights {
  size_t mixer_norm = SIZE_MAX, mlp_norm = SIZE_MAX;
  size_t wq = SIZE_MAX, wk = SIZE_MAX, wv = SIZE_MAX, wo = SIZE_MAX, q_norm = SIZE_MAX, k_norm = SIZE_MAX;
  size_t conv_in = SIZE_MAX, conv_kernel = SIZE_MAX, conv_out = SIZE_MAX;
  size_t w_gate = SIZE_MAX, w_up = SIZE_MAX, w_down = SIZE_MAX;
};

// Activations of one layer for one micro-batch. With recomputation all layers share one
// LayerActs and only the residual stream is kept per layer.
struct LayerActs {
  float* xn = nullptr;      // [N, C] rmsnorm(x_in)
  float* rstd1 = nullptr;   // [N]
  // attention
  float* q_pre = nullptr;   // [N, Hq*D] before qk-norm (qk_norm only)
  float* k_pre = nullptr;   // [N, Hkv*D]
  float* rstd_q = nullptr;  // [N*Hq]
  float* rstd_k = nullptr;  // [N*Hkv]
  float* q = nullptr;       // [N, Hq*D] as attention sees it (normed, rotated)
  float* k = nullptr;       // [N, Hkv*D]
  float* v = nullptr;       // [N, Hkv*D]
  // short convolution: (b, cg, xv) = xn W_in^T; yv = b*xv; z = conv(yv); g = cg*z
  float* b = nullptr;
  float* cg = nullptr;
  float* xv = nullptr;
  float* yv = nullptr;
  float* z = nullptr;
  float* g = nullptr;       // all [N, C]
  // MLP
  float* x_mid = nullptr;   // [N, C] x_in + mixer output
  float* xn2 = nullptr;     // [N, C]
  float* rstd2 = nullptr;   // [N]
  float* gate = nullptr;    // [N, F]
  float* up = nullptr;      // [N, F]
  float* h = nullptr;       // [N, F] silu(gate) * up
};

// Gradient scratch shared by all layers.
struct GradScratch {
  float* dx = nullptr;     // [N, C] gradient of the residual stream
  float* dtmp = nullptr;   // [N, C]
  float* dxn = nullptr;    // [N, C]
  float* dq = nullptr;     // [N, Hq*D]
  float* dk = nullptr;     // [N, Hkv*D]
  float* dv = nullptr;     // [N, Hkv*D]
  float* do_ = nullptr;    // [N, Hq*D] (also dg, dcg, dz, dyv, db, dxv for conv: [N, C] each)
  float* dc1 = nullptr;    // [N, max(C, Hq*D)]
  float* dc2 = nullptr;
  float* dc3 = nullptr;
  float* dh = nullptr;     // [N, F]
  float* dgate = nullptr;  // [N, F]
  float* dup = nullptr;    // [N, F]
};

struct Model::Impl {
  ModelDims dims;
  int64_t max_tokens = 0;
  kernels::Backend& be;
  kernels::CoreAttention& attention;
  ParameterSet params;
  size_t embedding = SIZE_MAX, final_norm = SIZE_MAX, lm_head = SIZE_MAX;
  std::vector<LayerWeights> layers;
  std::vector<size_t> layer_first_param;  // n_layers + 1: layer l owns params [first[l], first[l+1])
  std::vector<float*> resid;        // n_layers + 1 buffers [N, C]: the input of each layer, then the last output
  std::vector<LayerActs> acts;      // one per layer, or one shared when recomputing
  // Core attention's outputs, per attention layer (nullptr for conv layers), kept even when
  // recomputing so that a recomputed layer never runs core attention again.
  std::vector<float*> attn_o;       // [N, Hq*D]
  std::vector<float*> attn_lse;     // [N, Hq]
  int nano_batches = 1;
  // Per micro-batch: the parts, the attention plan, and the forward handle of every (layer, part).
  std::vector<kernels::RowRange> parts;
  std::vector<int32_t> first_pos;   // [n_seqs] position of each sequence's first row
  std::unique_ptr<kernels::AttentionPlan> plan;
  std::vector<std::unique_ptr<kernels::AttentionHandle>> fwd_handles;  // [layer * parts + part]
  std::vector<std::unique_ptr<kernels::AttentionHandle>> bwd_handles;  // [part], one layer at a time
  GradScratch grads;
  float* xf = nullptr;              // [N, C] final rmsnorm output
  float* rstd_f = nullptr;          // [N]
  std::vector<float*> owned;        // every activation buffer, freed in the destructor
  PhaseTimes times;

  Impl(const config::ModelConfig& cfg, int64_t max_tokens, kernels::Backend& backend,
       kernels::CoreAttention& attn);
  ~Impl();
  float* buffer(size_t count);
  LayerActs make_acts();
  LayerActs& acts_of(size_t layer) { return acts[dims.recompute ? 0 : layer]; }

  // The micro-batch's parts and attention plan (before its forward).
  void prepare(const Batch& batch);
  // One layer over every part. recomputing: the backward's refill of LayerActs; core attention
  // is not run again (its O and LSE are kept).
  void forward_layer(size_t l, const Batch& batch, bool recomputing);
  void backward_layer(size_t l, const Batch& batch);
  // Stages (see the top of this file), on the rows of parts[p].
  void mixer_pre(size_t l, const Batch& batch, size_t p, LayerActs& a);
  void mixer_core(size_t l, const Batch& batch, size_t p, LayerActs& a, bool recomputing);
  void layer_post(size_t l, const Batch& batch, size_t p, LayerActs& a);
  void post_backward(size_t l, const Batch& batch, size_t p, LayerActs& a);
  void core_backward(size_t l, const Batch& batch, size_t p, LayerActs& a);
  void pre_backward(size_t l, const Batch& batch, size_t p, LayerActs& a);
  void mlp_forward(size_t l, kernels::RowRange r, LayerActs& a);
  void mlp_backward(size_t l, kernels::RowRange r, LayerActs& a);
  // Runs the forward up to the final norm (results in resid and xf).
  void forward_trunk(const Batch& batch);
  // Tells sync (when not null) that parameters [first, end) have their final gradients.
  void announce_grads(GradientSync* sync, size_t first, size_t end, int layer);
  // The fused LM-head loss over xf for this batch, without gradient outputs.
  kernels::LmHeadLossArgs loss_args(const Batch& batch) const;
};

}  // namespace cadtrain::trainer
