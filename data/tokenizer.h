// Tokenizers: a built-in byte-level one (ids 0..255 are the bytes, exact round trip) and
// SentencePiece (trained on the input or loaded from a .model file saved beside the dataset).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cadtrain::data {

class Dataset;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;
  // Throws cadtrain::Error for an id >= vocab_size().
  virtual std::string decode(std::span<const uint32_t> ids) const = 0;
  virtual uint32_t vocab_size() const = 0;
  virtual std::string name() const = 0;  // the dataset's `tokenizer` attribute
};

// Throws cadtrain::Error naming the first id >= vocab_size and its position (shared by every
// decode()).
void check_token_ids(std::span<const uint32_t> ids, uint32_t vocab_size);

std::unique_ptr<Tokenizer> make_byte_tokenizer();

// Loads a trained SentencePiece model; throws naming the file if it is missing or invalid.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path);

struct SentencePieceTrainOptions {
  uint32_t vocab_size = 8000;
  std::string model_type = "unigram";  // unigram or bpe
  double character_coverage = 0.9995;
  uint64_t max_sentences = 1000000;  // sentences sampled from the input for training
};

// Trains a SentencePiece model on the given text files, writing <model_prefix>.model and
// <model_prefix>.vocab, and returns the path of the .model file.
std::string train_sentencepiece(const std::vector<std::string>& input_files,
                                const std::string& model_prefix,
                                const SentencePieceTrainOptions& options);

// The tokenizer a dataset was built with, from its `tokenizer` / `tokenizer_model` attributes.
std::unique_ptr<Tokenizer> tokenizer_for(const Dataset& dataset);

}  // namespace cadtrain::data
