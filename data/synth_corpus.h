// The embedded default corpus: byte-level text documents with a long-tailed length distribution,
// each carrying long-range retrieval tasks (a key/value fact stated early, queried late), so that
// the answer tokens can only be predicted through long-range attention. Deterministic from a seed
// on every platform (cadtrain::Rng, no std distributions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"

namespace cadtrain {
class Rng;
}

namespace cadtrain::data {

struct SynthDocument {
  std::vector<uint32_t> tokens;      // byte-level ids
  std::vector<uint8_t> answer_mask;  // 1 on the value tokens that answer a query
  float difficulty = 0.0f;           // mean fact-to-query distance, in thousands of tokens
};

// Document lengths for cfg.n_docs documents, drawn from cfg.length_distribution scaled to
// cfg.mean_doc_tokens and clipped to [min_doc_tokens, max_doc_tokens].
std::vector<uint64_t> sample_doc_lengths(const config::SynthConfig& cfg, Rng& rng);

// One document of exactly `length` tokens with facts at cfg.facts_per_1k_tokens.
SynthDocument generate_document(const config::SynthConfig& cfg, uint64_t length, Rng& rng);

struct SynthSummary {
  uint64_t n_docs = 0;
  uint64_t n_tokens = 0;
  uint64_t n_answer_tokens = 0;
};

// Generates the whole corpus into an HDF5 dataset at path (byte tokenizer, vocab 256, with
// /difficulty and /answer_mask).
SynthSummary write_synthetic_corpus(const config::SynthConfig& cfg, const std::string& path);

}  // namespace cadtrain::data
