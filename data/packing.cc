// Packer: fills micro-batches from each epoch's document order (see data/packing.h).
#include "data/packing.h"

#include <algorithm>  // std::min
#include <cstddef>    // ptrdiff_t
#include <cstdint>    // token ids, offsets
#include <limits>     // int32 range of positions and cu_seqlens
#include <numeric>    // std::iota
#include <string>     // messages
#include <utility>    // std::swap, std::move
#include <vector>     // the order and the batch columns

#include "common/error.h"  // cadtrain::Error, fail(), with_context()
#include "common/rng.h"    // cadtrain::Rng: the same permutation on every platform
#include "data/dataset.h"  // documents and token reads

namespace cadtrain::data {
namespace {

constexpr uint64_t kMaxInt32 = static_cast<uint64_t>(std::numeric_limits<int32_t>::max());

void validate_options(const PackerOptions& options) {
  if (options.tokens_per_micro_batch == 0) fail("tokens_per_micro_batch must be > 0");
  // cu_seqlens are int32, as the varlen attention kernels take them.
  if (options.tokens_per_micro_batch > kMaxInt32) {
    fail("tokens_per_micro_batch {} exceeds the int32 range of cu_seqlens",
         options.tokens_per_micro_batch);
  }
  if (options.world == 0) fail("world must be > 0");
  if (options.rank >= options.world) {
    fail("rank {} must be < world {}", options.rank, options.world);
  }
}

void require_tokens(const Dataset& dataset) {
  if (dataset.num_tokens() == 0) fail("{}: the dataset has no tokens to pack", dataset.path());
}

// Fisher-Yates with the project's Rng, seeded by (seed, epoch) alone, so that any epoch's order
// can be rebuilt on resume without replaying the ones before it.
void epoch_order(uint64_t n_docs, const PackerOptions& options, uint64_t epoch,
                 std::vector<uint64_t>* order) {
  order->resize(n_docs);
  std::iota(order->begin(), order->end(), uint64_t{0});
  if (!options.shuffle) return;
  Rng rng(options.seed, epoch);
  for (uint64_t i = n_docs; i > 1; --i) std::swap((*order)[i - 1], (*order)[rng.below(i)]);
}

// Moves past the document at the cursor, into the next epoch after the last one.
void next_document(uint64_t n_docs, const PackerOptions& options, PackerPosition* pos,
                   std::vector<uint64_t>* order) {
  pos->token_offset = 0;
  if (++pos->doc_cursor < n_docs) return;
  pos->doc_cursor = 0;
  ++pos->epoch;
  epoch_order(n_docs, options, pos->epoch, order);
}

// Appends tokens [offset, offset + take) of document doc, with their next-token targets.
void append_piece(const Dataset& dataset, uint64_t doc, uint64_t offset, uint64_t take,
                  MicroBatch* out) {
  const uint64_t begin = dataset.doc_offsets()[doc] + offset;
  const uint64_t length = dataset.doc_length(doc);
  if (offset + take - 1 > kMaxInt32) {
    fail("{}: document {} has {} tokens, more than int32 positions can index", dataset.path(), doc,
         length);
  }
  // A piece cut before the end of its document still predicts the document's next token, so one
  // read takes that token too; only the document's final token has nothing to predict.
  const bool continues = offset + take < length;
  const uint64_t n_read = take + (continues ? 1 : 0);
  const size_t n = out->tokens.size();
  out->tokens.resize(n + n_read);
  dataset.read_tokens(begin, begin + n_read, out->tokens.data() + n);
  out->targets.insert(out->targets.end(), out->tokens.begin() + static_cast<ptrdiff_t>(n + 1),
                      out->tokens.end());
  out->tokens.resize(n + take);
  out->loss_mask.resize(n + take, 1.0f);
  out->is_answer.resize(n + take, 0);
  if (!continues) {
    out->targets.push_back(0);
    out->loss_mask.back() = 0.0f;
  }
  // is_answer describes the target, i.e. the token after each input.
  if (dataset.has_answer_mask() && n_read > 1) {
    dataset.read_answer_mask(begin + 1, begin + n_read, out->is_answer.data() + n);
  }
  for (uint64_t i = 0; i < take; ++i) out->positions.push_back(static_cast<int32_t>(offset + i));
  out->cu_seqlens.push_back(static_cast<int32_t>(n + take));
  out->doc_ids.push_back(doc);
}

MicroBatch empty_batch(uint64_t tokens) {
  MicroBatch batch;
  batch.tokens.reserve(tokens + 1);  // +1: append_piece briefly holds one target beyond the piece
  batch.targets.reserve(tokens);
  batch.loss_mask.reserve(tokens);
  batch.is_answer.reserve(tokens);
  batch.positions.reserve(tokens);
  batch.cu_seqlens.push_back(0);
  return batch;
}

// The position's token index within its epoch: the documents before the cursor plus the offset.
uint64_t tokens_into_epoch(const Dataset& dataset, const std::vector<uint64_t>& order,
                           const PackerPosition& position) {
  uint64_t tokens = position.token_offset;
  for (uint64_t i = 0; i < position.doc_cursor; ++i) tokens += dataset.doc_length(order[i]);
  return tokens;
}

// A saved position must be one this dataset and micro-batch size can reach: the cursor and offset
// inside the epoch's order, and exactly micro_batches * tokens_per_micro_batch tokens consumed
// (which catches a position saved for another dataset or another batch size).
void validate_position(const Dataset& dataset, const PackerOptions& options,
                       const std::vector<uint64_t>& order, const PackerPosition& position) {
  const uint64_t n_docs = dataset.num_docs();
  if (position.doc_cursor >= n_docs) {
    fail("doc_cursor {} is out of range ({} documents)", position.doc_cursor, n_docs);
  }
  const uint64_t doc = order[position.doc_cursor];
  const uint64_t length = dataset.doc_length(doc);
  if (position.token_offset > 0 && position.token_offset >= length) {
    fail("token_offset {} is out of range: document {} (doc_cursor {}) has {} tokens",
         position.token_offset, doc, position.doc_cursor, length);
  }
  const uint128_t consumed =
      static_cast<uint128_t>(position.micro_batches) * options.tokens_per_micro_batch;
  if (consumed > std::numeric_limits<uint64_t>::max()) {
    fail("micro_batches {} is out of range: {} tokens each overflow a 64-bit token count",
         position.micro_batches, options.tokens_per_micro_batch);
  }
  const uint64_t n_tokens = dataset.num_tokens();
  const uint64_t consumed_u64 = static_cast<uint64_t>(consumed);
  if (position.epoch > consumed_u64 / n_tokens) {
    fail(
        "epoch {} is out of range: {} micro-batches of {} tokens reach only epoch {} ({} tokens "
        "per epoch)",
        position.epoch, position.micro_batches, options.tokens_per_micro_batch,
        consumed_u64 / n_tokens, n_tokens);
  }
  const uint64_t expected = consumed_u64 - position.epoch * n_tokens;
  const uint64_t actual = tokens_into_epoch(dataset, order, position);
  if (actual != expected) {
    fail(
        "micro_batches {} does not match the position: {} micro-batches of {} tokens end at token "
        "{} of epoch {}, but doc_cursor {} with token_offset {} is at token {}",
        position.micro_batches, position.micro_batches, options.tokens_per_micro_batch, expected,
        position.epoch, position.doc_cursor, position.token_offset, actual);
  }
}

}  // namespace

Packer::Packer(const Dataset& dataset, const PackerOptions& options)
    : dataset_(dataset), options_(options) {
  with_context(fmt::format("{}: packer", dataset_.path()), [&] { validate_options(options_); });
  epoch_order(dataset_.num_docs(), options_, pos_.epoch, &order_);
}

MicroBatch Packer::next() {
  require_tokens(dataset_);
  // A failed read leaves the stream where it was, so a caller that handles the Error can retry.
  const PackerPosition saved = pos_;
  try {
    while (pos_.micro_batches % options_.world != options_.rank) fill(nullptr);
    MicroBatch batch = empty_batch(options_.tokens_per_micro_batch);
    fill(&batch);
    // Skipping the rest of the round now makes every rank report the same position after the
    // same number of steps, so any rank's saved position resumes all of them.
    while (pos_.micro_batches % options_.world != 0) fill(nullptr);
    return batch;
  } catch (...) {
    if (pos_.epoch != saved.epoch) epoch_order(dataset_.num_docs(), options_, saved.epoch, &order_);
    pos_ = saved;
    throw;
  }
}

PackerPosition Packer::position() const { return pos_; }

void Packer::restore(const PackerPosition& position) {
  require_tokens(dataset_);
  std::vector<uint64_t> order;
  epoch_order(dataset_.num_docs(), options_, position.epoch, &order);
  with_context(fmt::format("{}: cannot restore packer position", dataset_.path()),
               [&] { validate_position(dataset_, options_, order, position); });
  pos_ = position;
  order_ = std::move(order);
}

// Skipping (out == nullptr) walks the same document lengths without reading any token, so a rank
// passes over the other ranks' micro-batches at the cost of a few additions each.
void Packer::fill(MicroBatch* out) {
  const uint64_t n_docs = dataset_.num_docs();
  uint64_t space = options_.tokens_per_micro_batch;
  while (space > 0) {
    const uint64_t doc = order_[pos_.doc_cursor];
    const uint64_t length = dataset_.doc_length(doc);
    const uint64_t take = std::min(length - pos_.token_offset, space);
    if (take > 0 && out != nullptr) append_piece(dataset_, doc, pos_.token_offset, take, out);
    space -= take;
    pos_.token_offset += take;
    if (pos_.token_offset == length) next_document(n_docs, options_, &pos_, &order_);
  }
  ++pos_.micro_batches;
}

}  // namespace cadtrain::data
