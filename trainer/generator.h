// Text generation from a trained model with a KV cache: one token at a time, each attending to
// the cached keys and values of the tokens before it (short-convolution layers cache their last
// K-1 inputs instead). Uses only the model's public parameters, by name.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "trainer/model.h"

namespace cadtrain::trainer {

struct SamplingOptions {
  double temperature = 0;  // 0 = greedy (argmax)
  uint32_t top_k = 0;      // 0 = the whole vocabulary
  uint64_t seed = 1;
  uint64_t max_tokens = 0;  // prompt + new tokens may not exceed this (the model's max_seq_len); 0: no limit
};

class Generator {
 public:
  // max_len bounds prompt + generated tokens (the cache is allocated for it).
  Generator(Model& model, int64_t max_len);
  ~Generator();
  // Feeds the next token (position = tokens fed so far) and returns the logits [vocab] that
  // predict the token after it.
  const std::vector<float>& feed(uint32_t token);
  int64_t length() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Feeds the prompt, then samples n_new tokens; returns the new tokens only. Throws before any
// work when the temperature is not a finite number >= 0 or prompt + n_new exceeds max_tokens.
std::vector<uint32_t> generate(Model& model, const std::vector<uint32_t>& prompt, uint32_t n_new,
                               const SamplingOptions& options);

}  // namespace cadtrain::trainer
