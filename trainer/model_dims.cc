// Model shape and FLOP counting (see model_dims.h).
#include "trainer/model_dims.h"

#include "configs/config.h"
#include "kernels/attention_tasks.h"  // layout_pairs: the one pair count

namespace cadtrain::trainer {

ModelDims ModelDims::from(const config::ModelConfig& cfg) {
  ModelDims d;
  d.vocab = cfg.vocab_size();
  d.c = cfg.d_model();
  d.n_layers = cfg.n_layers();
  d.q_heads = cfg.n_heads();
  d.kv_heads = config::kv_heads(cfg);
  d.head_dim = config::head_dim(cfg);
  d.ffn = config::ffn_hidden(cfg);
  d.conv_k = cfg.conv_kernel();
  d.rope_theta = cfg.rope_theta();
  d.norm_eps = cfg.norm_eps();
  d.init_std = cfg.init_std();
  d.tied = cfg.tie_embeddings();
  d.qk_norm = cfg.qk_norm();
  d.recompute = cfg.recompute_activations();
  for (uint32_t l = 0; l < cfg.n_layers(); ++l) d.kinds.push_back(config::layer_kind(cfg, l));
  return d;
}

uint64_t ModelDims::matmul_params() const {
  const auto attention = static_cast<uint64_t>(c * q_dim() * 2 + c * kv_dim() * 2);
  const auto conv = static_cast<uint64_t>(4 * c * c);  // W_in (3C x C) and W_out (C x C)
  const auto mlp = static_cast<uint64_t>(3 * c * ffn);
  uint64_t total = static_cast<uint64_t>(vocab * c);  // LM head
  for (const auto kind : kinds) total += (kind == config::ATTENTION ? attention : conv) + mlp;
  return total;
}

uint64_t ModelDims::param_count() const {
  uint64_t total = static_cast<uint64_t>(vocab * c) * (tied ? 1 : 2) + static_cast<uint64_t>(c);  // + final norm
  for (const auto kind : kinds) {
    total += static_cast<uint64_t>(2 * c + 3 * c * ffn);  // two norms, MLP
    if (kind == config::ATTENTION) {
      total += static_cast<uint64_t>(c * q_dim() * 2 + c * kv_dim() * 2);
      if (qk_norm) total += static_cast<uint64_t>(2 * head_dim);
    } else {
      total += static_cast<uint64_t>(4 * c * c + c * conv_k);
    }
  }
  return total;
}

uint64_t causal_pairs(std::span<const int32_t> cu_seqlens) {
  if (cu_seqlens.empty()) return 0;
  return kernels::layout_pairs({cu_seqlens.data(), static_cast<int64_t>(cu_seqlens.size()) - 1});
}

double training_flops(const ModelDims& dims, uint64_t tokens, uint64_t pairs) {
  double attention_layers = 0;
  for (const auto kind : dims.kinds) attention_layers += kind == config::ATTENTION ? 1 : 0;
  return 6.0 * static_cast<double>(dims.matmul_params()) * static_cast<double>(tokens) +
         12.0 * static_cast<double>(pairs) * static_cast<double>(dims.head_dim * dims.q_heads) * attention_layers;
}

}  // namespace cadtrain::trainer
