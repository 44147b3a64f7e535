// Packing documents into micro-batches: every micro-batch is one token stream of exactly
// tokens_per_micro_batch tokens holding whole documents and pieces of documents, with the
// boundaries (cu_seqlens), true positions, next-token targets and loss mask the model needs.
//
// Order: an epoch is a permutation of the documents (identity when not shuffling, else seeded by
// (seed, epoch)); documents fill the stream in that order. A document that does not fit in what
// is left of a micro-batch is split: its first piece ends this micro-batch and the rest starts the
// next one, keeping its true positions (RoPE attention depends only on position differences, so
// a piece attends within itself exactly as it would have). Nothing is padded except, at the very
// end of a finite run, nothing: the stream wraps into the next epoch.
//
// Data parallel: rank r of W takes micro-batches r, r+W, r+2W, ... of the one global stream, so
// the union over ranks is exactly the single-process stream.
#pragma once

#include <cstdint>
#include <vector>

namespace cadtrain::data {

class Dataset;

struct MicroBatch {
  std::vector<uint32_t> tokens;     // [n] model inputs
  std::vector<uint32_t> targets;    // [n] the next token of the same document (0 where masked)
  std::vector<float> loss_mask;     // [n] 1 where targets[i] is a real next token, else 0
  std::vector<uint8_t> is_answer;   // [n] 1 where targets[i] is a retrieval answer token
  std::vector<int32_t> positions;   // [n] position of tokens[i] in its document
  std::vector<int32_t> cu_seqlens;  // [n_seqs + 1] piece boundaries in the stream
  std::vector<uint64_t> doc_ids;    // [n_seqs] the document each piece comes from
};

// Where the stream is, enough to resume it exactly.
struct PackerPosition {
  uint64_t epoch = 0;
  uint64_t doc_cursor = 0;    // index into the epoch's permutation
  uint64_t token_offset = 0;  // tokens of that document already emitted
  uint64_t micro_batches = 0; // global micro-batches emitted so far
};

struct PackerOptions {
  uint64_t tokens_per_micro_batch = 4096;
  bool shuffle = true;
  uint64_t seed = 0;
  uint32_t rank = 0;        // data-parallel rank
  uint32_t world = 1;       // data-parallel ranks
};

class Packer {
 public:
  Packer(const Dataset& dataset, const PackerOptions& options);
  // The next micro-batch of this rank. Throws if the dataset has no tokens.
  MicroBatch next();
  // After the same number of next() calls every rank reports the same position (the end of the
  // last round of W micro-batches), so one saved position resumes all ranks.
  PackerPosition position() const;
  // Continues from a saved position; throws naming the field if it does not fit the dataset.
  void restore(const PackerPosition& position);

 private:
  void fill(MicroBatch* out);  // appends the next global micro-batch's tokens (or skips them)
  const Dataset& dataset_;
  PackerOptions options_;
  PackerPosition pos_;
  std::vector<uint64_t> order_;  // permutation of the current epoch
};

}  // namespace cadtrain::data
