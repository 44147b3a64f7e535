// ModelDims: the model's shape resolved from its config (derived defaults applied), and the FLOP
// counts that MFU and the planner use.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "configs/cadtrain.pb.h"

namespace cadtrain::trainer {

struct ModelDims {
  int64_t vocab = 0, c = 0, n_layers = 0, q_heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, conv_k = 0;
  double rope_theta = 0, norm_eps = 0, init_std = 0;
  bool tied = true, qk_norm = false, recompute = false;
  std::vector<config::LayerKind> kinds;  // one per layer

  static ModelDims from(const config::ModelConfig& cfg);
  int64_t q_dim() const { return q_heads * head_dim; }
  int64_t kv_dim() const { return kv_heads * head_dim; }

  uint64_t param_count() const;
  // Weights multiplied by every token (all linear layers and the LM head, not the embedding
  // lookup): training FLOPs of the dense part are 6 x this per token.
  uint64_t matmul_params() const;
};

// Causal (query, key) pairs of packed sequences: sum of T(T+1)/2 (kernels::layout_pairs, the
// task contract's count, which the attention kernels and the cost model use too).
uint64_t causal_pairs(std::span<const int32_t> cu_seqlens);

// Model FLOPs of one training step's forward + backward over `tokens` tokens whose sequences have
// `pairs` causal pairs: 6 * matmul_params * tokens + 12 * pairs * head_dim * q_heads per
// attention layer (forward 4, backward 8 per pair and head dimension; recomputation not counted).
double training_flops(const ModelDims& dims, uint64_t tokens, uint64_t pairs);

}  // namespace cadtrain::trainer
