// Derived values of a config: the rules behind fields whose 0 means "derive it".
#include "configs/config.h"

namespace cadtrain::config {

uint32_t kv_heads(const ModelConfig& model) {
  return model.n_kv_heads() == 0 ? model.n_heads() : model.n_kv_heads();
}

uint32_t head_dim(const ModelConfig& model) {
  return model.head_dim() == 0 ? model.d_model() / model.n_heads() : model.head_dim();
}

uint32_t ffn_hidden(const ModelConfig& model) {
  if (model.ffn_hidden() != 0) return model.ffn_hidden();
  // Llama: 2/3 of 4*d_model, rounded up to a multiple of ffn_multiple_of.
  const uint64_t raw = (8ull * model.d_model() + 2) / 3;
  const uint64_t m = model.ffn_multiple_of();
  return static_cast<uint32_t>((raw + m - 1) / m * m);
}

LayerKind layer_kind(const ModelConfig& model, uint32_t layer) {
  return model.layer_kinds_size() == 0 ? ATTENTION : model.layer_kinds(static_cast<int>(layer));
}

uint32_t trainer_ranks(const RunConfig& cfg) {
  return cfg.parallel().data_parallel() * cfg.parallel().context_parallel();
}

uint32_t required_world_size(const RunConfig& cfg) {
  const uint32_t servers =
      cfg.attention().strategy() == CAD ? cfg.attention().cad().dedicated_servers() : 0;
  return trainer_ranks(cfg) + servers;
}

std::string run_dir(const RunConfig& cfg) { return cfg.output_dir() + "/" + cfg.name(); }

}  // namespace cadtrain::config
