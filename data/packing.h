// Packing documents into micro-batches: best-fit packing of whole documents, with the boundaries
// (cu_seqlens), true positions, next-token targets and loss mask the model needs.
//
// Order: an epoch is a permutation of the documents (identity when not shuffling, else seeded by
// (seed, epoch)). The epoch is cut into windows of consecutive documents holding at least
// window_micro_batches * tokens_per_micro_batch tokens (the last window of an epoch may hold
// fewer); each window's documents are packed by best-fit decreasing (longest first, each into the
// open micro-batch it fills most tightly) and its micro-batches are emitted in the order of the
// earliest document each holds, documents inside one in epoch order.
//
// Whole documents: a document that fits in a micro-batch is never cut, so every token sees its
// whole document before it. A document longer than a micro-batch cannot be given its context by
// LOCAL attention, where no micro-batch sees another: with cut_long_documents it is cut into
// pieces of tokens_per_micro_batch tokens (the last piece shorter, packed like a document); each
// piece keeps its true positions, but a piece after the first cannot attend to the pieces before
// it, so its tokens are counted in MicroBatch::cut_tokens. Without cut_long_documents such a
// document is an error naming it (the context-parallel strategies will give it its whole prefix).
//
// Not padded: a micro-batch holds between 1 and tokens_per_micro_batch tokens (the model takes any
// n up to its max_tokens), so no compute is spent on padding; the fill rate (tokens over
// tokens_per_micro_batch) says how much of the capacity was used.
//
// Data parallel: rank r of W takes micro-batches r, r+W, r+2W, ... of the one global stream, so
// the union over ranks is exactly the single-process stream.
//
// Curriculum (data/curriculum.h): with one, a window takes only the documents eligible at the step
// its first micro-batch belongs to (the global micro-batch counter at the window's start, over
// micro-batches per step), skipping the others in the epoch's order; an epoch is one pass over the
// order, so each document eligible when its turn comes is seen once per pass, in shuffled order.
// The window's plan is a function of (seed, epoch, doc_cursor, micro-batch counter), all in the
// saved position, so a resumed stream is the same stream.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace cadtrain::data {

class Curriculum;
class Dataset;

struct MicroBatch {
  std::vector<uint32_t> tokens;     // [n] model inputs, 1 <= n <= tokens_per_micro_batch
  std::vector<uint32_t> targets;    // [n] the next token of the same document (0 where masked)
  std::vector<float> loss_mask;     // [n] 1 where targets[i] is a real next token, else 0
  std::vector<uint8_t> is_answer;   // [n] 1 where targets[i] is a retrieval answer token
  std::vector<int32_t> positions;   // [n] position of tokens[i] in its document
  std::vector<int32_t> cu_seqlens;  // [n_seqs + 1] document (or piece) boundaries in the stream
  std::vector<uint64_t> doc_ids;    // [n_seqs] the document each sequence comes from
  uint64_t cut_tokens = 0;  // tokens in pieces that start after their document's first token
};

// Where the stream is, enough to resume it exactly.
struct PackerPosition {
  uint64_t epoch = 0;
  uint64_t doc_cursor = 0;       // first document (index into the epoch's order) of the window
  uint64_t batch_in_window = 0;  // micro-batches of that window already emitted
  uint64_t micro_batches = 0;    // global micro-batches emitted so far
};

struct PackerOptions {
  uint64_t tokens_per_micro_batch = 4096;
  bool shuffle = true;
  uint64_t seed = 0;
  uint32_t rank = 0;        // data-parallel rank
  uint32_t world = 1;       // data-parallel ranks
  bool cut_long_documents = true;     // LOCAL attention; false: a longer document is an error
  uint32_t window_micro_batches = 16; // best-fit lookahead; part of the stream's definition
  std::shared_ptr<const Curriculum> curriculum;  // null: every document is eligible
};

class Packer {
 public:
  Packer(const Dataset& dataset, const PackerOptions& options);
  // The next micro-batch of this rank. Throws if the dataset has no tokens.
  MicroBatch next();
  // After the same number of next() calls every rank reports the same position (the end of the
  // last round of W micro-batches), so one saved position resumes all ranks. The position always
  // names a micro-batch not yet emitted: after an epoch's last one, it is epoch + 1's first.
  PackerPosition position() const;
  // Continues from a saved position; throws naming the field if it does not fit the dataset.
  void restore(const PackerPosition& position);
  // The share of the documents eligible in the window of the micro-batch next() last returned
  // (1 without a curriculum).
  double admitted_fraction() const { return admitted_fraction_; }

  // A stretch of one document: tokens [offset, offset + length).
  struct Piece {
    uint64_t doc = 0;
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  using Plan = std::vector<std::vector<Piece>>;  // one window's micro-batches, in emission order

 private:
  void advance();  // past the emitted micro-batch, planning the next window when this one is done
  void settle();   // from a finished (or empty) window's end to the next window with a micro-batch
  void plan_window();
  const Dataset& dataset_;
  PackerOptions options_;
  PackerPosition pos_;
  std::vector<uint64_t> order_;  // permutation of the current epoch
  Plan plan_;                    // the micro-batches of the window at pos_.doc_cursor
  uint64_t window_end_ = 0;      // the order index after that window's last document
  uint64_t window_admitted_ = 0; // documents eligible in that window (curriculum only)
  double admitted_fraction_ = 1.0;
};

}  // namespace cadtrain::data
