// Small models and batches for the trainer tests.
#pragma once

#include <vector>

#include "common/rng.h"
#include "configs/cadtrain.pb.h"
#include "data/packing.h"
#include "trainer/batch.h"
#include "trainer/model.h"

namespace cadtrain::test {

// A small mixed model: attention and short-conv layers, GQA 4:2, odd-ish sizes.
inline config::ModelConfig small_model_config(bool qk_norm, bool tied) {
  config::ModelConfig m;
  m.set_vocab_size(37);
  m.set_d_model(16);
  m.set_n_layers(3);
  m.set_n_heads(4);
  m.set_n_kv_heads(2);
  m.set_ffn_hidden(24);
  m.set_qk_norm(qk_norm);
  m.set_tie_embeddings(tied);
  m.set_init_std(0.3);  // large enough that every path carries gradient worth checking
  m.add_layer_kinds(config::ATTENTION);
  m.add_layer_kinds(config::SHORT_CONV);
  m.add_layer_kinds(config::ATTENTION);
  return m;
}

// A packed batch of the given sequence lengths with random tokens and a few masked targets
// (view it with trainer::batch_view).
inline data::MicroBatch make_batch(const std::vector<int32_t>& lengths, uint32_t vocab, uint64_t seed) {
  Rng rng(seed);
  data::MicroBatch b;
  b.cu_seqlens.push_back(0);
  for (const int32_t len : lengths) {
    for (int32_t p = 0; p < len; ++p) {
      b.tokens.push_back(static_cast<uint32_t>(rng.below(vocab)));
      b.targets.push_back(static_cast<uint32_t>(rng.below(vocab)));
      b.loss_mask.push_back(p + 1 == len || rng.below(7) == 0 ? 0.0f : 1.0f);
      b.positions.push_back(p);
    }
    b.cu_seqlens.push_back(b.cu_seqlens.back() + len);
  }
  return b;
}

}  // namespace cadtrain::test
