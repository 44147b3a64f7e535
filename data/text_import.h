// `cadtrain data build`: text files (or a directory of them) in, an HDF5 dataset out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace cadtrain::data {

struct TextImportOptions {
  std::vector<std::string> inputs;  // files and/or directories (walked recursively, sorted)
  std::string output;               // dataset path (.h5)
  // Documents: one per file when separator is empty, else split on this exact string.
  std::string separator;
  std::string tokenizer = "byte";   // "byte" or "sentencepiece"
  // SentencePiece: use this trained model, or (when empty) train one on the inputs and save it
  // beside the output as <output stem>.model.
  std::string sentencepiece_model;
  SentencePieceTrainOptions sentencepiece;
  bool skip_empty = true;  // drop documents that encode to zero tokens
};

struct TextImportSummary {
  uint64_t n_files = 0;
  uint64_t n_docs = 0;
  uint64_t n_tokens = 0;
  uint64_t n_bytes = 0;  // text bytes read
  std::string tokenizer_model;  // path of the SentencePiece model used, if any
};

TextImportSummary import_text(const TextImportOptions& options);

}  // namespace cadtrain::data
