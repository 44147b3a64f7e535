// Packer: best-fit packs each window of an epoch's document order into micro-batches
// (see data/packing.h).
#include "data/packing.h"

#include <algorithm>  // std::min, std::sort, std::stable_sort
#include <cstddef>    // ptrdiff_t
#include <cstdint>    // token ids, offsets
#include <limits>     // int32 range of positions and cu_seqlens
#include <numeric>    // std::iota
#include <string>     // messages
#include <utility>    // std::swap, std::move
#include <vector>     // the order and the batch columns

#include "common/error.h"  // cadtrain::Error, fail(), with_context()
#include "common/rng.h"    // cadtrain::Rng: the same permutation on every platform
#include "data/curriculum.h"  // which documents a window may take
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
  if (options.window_micro_batches == 0) fail("window_micro_batches must be > 0");
  if (options.world == 0) fail("world must be > 0");
  if (options.rank >= options.world) {
    fail("rank {} must be < world {}", options.rank, options.world);
  }
}

// Which documents a window may take: every one, or the curriculum's easiest `count`.
struct Eligible {
  const Curriculum* curriculum = nullptr;
  uint64_t count = 0;
  bool operator()(uint64_t doc) const { return curriculum == nullptr || curriculum->admitted(doc, count); }
};

// The documents eligible in a window whose first micro-batch is global micro-batch `first`.
Eligible eligible_at(const PackerOptions& options, uint64_t first) {
  if (!options.curriculum) return {};
  const Curriculum& c = *options.curriculum;
  return {&c, c.admitted_count(c.step_of(first))};
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
  if (offset > 0) out->cut_tokens += take;
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

// The windows of one epoch (see packing.h): the first window starts at order index 0; a window
// takes eligible documents until it holds window_tokens or the epoch ends.
uint64_t window_end(const Dataset& dataset, const std::vector<uint64_t>& order, uint64_t start,
                    uint64_t window_tokens, const Eligible& eligible) {
  uint64_t tokens = 0;
  uint64_t end = start;
  while (end < order.size() && tokens < window_tokens) {
    const uint64_t doc = order[end++];
    if (eligible(doc)) tokens += dataset.doc_length(doc);
  }
  return end;
}

// Best-fit decreasing over the window's documents (and the pieces of cut ones): longest first,
// each into the open micro-batch whose free space it fills most tightly, else a new one. Emitted
// in the order of each micro-batch's earliest (order index, offset); inside one, in that order.
Packer::Plan pack_window(const Dataset& dataset, const PackerOptions& options,
                         const std::vector<uint64_t>& order, uint64_t begin, uint64_t end,
                         const Eligible& eligible) {
  const uint64_t capacity = options.tokens_per_micro_batch;
  struct Item {
    Packer::Piece piece;
    uint64_t index;  // in the epoch's order
  };
  std::vector<Item> items;
  for (uint64_t i = begin; i < end; ++i) {
    const uint64_t doc = order[i];
    if (!eligible(doc)) continue;
    const uint64_t length = dataset.doc_length(doc);
    if (length > capacity && !options.cut_long_documents) {
      fail("document {} has {} tokens, more than tokens_per_micro_batch {}, and this attention "
           "strategy does not cut documents: raise data.tokens_per_micro_batch",
           doc, length, capacity);
    }
    for (uint64_t offset = 0; offset < length; offset += capacity) {
      items.push_back({{doc, offset, std::min(capacity, length - offset)}, i});
    }
  }
  const auto earlier = [](const Item& a, const Item& b) {
    return a.index != b.index ? a.index < b.index : a.piece.offset < b.piece.offset;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    return a.piece.length != b.piece.length ? a.piece.length > b.piece.length : earlier(a, b);
  });
  std::vector<std::vector<Item>> bins;
  std::vector<uint64_t> free;
  for (const Item& item : items) {
    size_t best = bins.size();
    for (size_t b = 0; b < bins.size(); ++b) {
      if (free[b] >= item.piece.length && (best == bins.size() || free[b] < free[best])) best = b;
    }
    if (best == bins.size()) {
      bins.emplace_back();
      free.push_back(capacity);
    }
    bins[best].push_back(item);
    free[best] -= item.piece.length;
  }
  for (auto& bin : bins) std::sort(bin.begin(), bin.end(), earlier);
  std::sort(bins.begin(), bins.end(),
            [&](const auto& a, const auto& b) { return earlier(a.front(), b.front()); });
  Packer::Plan out(bins.size());
  for (size_t b = 0; b < bins.size(); ++b) {
    for (const Item& item : bins[b]) out[b].push_back(item.piece);
  }
  return out;
}

// A saved position must be one this dataset and these options can reach: doc_cursor at the start
// of a window of the epoch's order, batch_in_window inside that window's plan, and at least as
// many micro-batches emitted as the epochs before and the windows before need (an epoch needs at
// least num_tokens / tokens_per_micro_batch), which catches most positions saved for another
// dataset or another micro-batch size. Under a curriculum the earlier windows of the epoch took
// the documents eligible at their own starts, which the position does not record, so only the
// window at doc_cursor is checked. Returns the window's end.
uint64_t validate_position(const Dataset& dataset, const PackerOptions& options,
                           const std::vector<uint64_t>& order, const PackerPosition& position) {
  const uint64_t n_docs = dataset.num_docs();
  if (position.doc_cursor >= n_docs) {
    fail("doc_cursor {} is out of range ({} documents)", position.doc_cursor, n_docs);
  }
  if (position.batch_in_window > position.micro_batches) {
    fail("batch_in_window {} is more than the {} micro-batches emitted", position.batch_in_window,
         position.micro_batches);
  }
  const uint64_t window_tokens = options.tokens_per_micro_batch * options.window_micro_batches;
  const Eligible eligible = eligible_at(options, position.micro_batches - position.batch_in_window);
  uint64_t batches_before = 0;  // micro-batches of this epoch's windows before doc_cursor
  if (!options.curriculum) {
    uint64_t start = 0;
    uint64_t previous = 0;
    while (start < position.doc_cursor) {
      const uint64_t end = window_end(dataset, order, start, window_tokens, eligible);
      batches_before += pack_window(dataset, options, order, start, end, eligible).size();
      previous = start;
      start = end;
    }
    if (start != position.doc_cursor) {
      fail("doc_cursor {} is not the start of a packing window (windows of at least {} tokens "
           "start at {} and {})",
           position.doc_cursor, window_tokens, previous, start);
    }
  }
  const uint64_t start = position.doc_cursor;
  const uint64_t end = window_end(dataset, order, start, window_tokens, eligible);
  const uint64_t in_window = pack_window(dataset, options, order, start, end, eligible).size();
  if (position.batch_in_window >= in_window) {
    fail("batch_in_window {} is out of range: the window at doc_cursor {} packs into {} "
         "micro-batches",
         position.batch_in_window, position.doc_cursor, in_window);
  }
  if (options.curriculum) return end;  // an epoch of eligible documents has no minimum length
  const uint64_t per_epoch = (dataset.num_tokens() + options.tokens_per_micro_batch - 1) /
                             options.tokens_per_micro_batch;
  const uint128_t needed = static_cast<uint128_t>(position.epoch) * per_epoch + batches_before +
                           position.batch_in_window;
  if (position.micro_batches < needed) {
    fail("micro_batches {} does not match the position: epoch {}, doc_cursor {}, "
         "batch_in_window {} need at least {} micro-batches of {} tokens",
         position.micro_batches, position.epoch, position.doc_cursor, position.batch_in_window,
         static_cast<uint64_t>(std::min<uint128_t>(needed, ~uint64_t{0})),
         options.tokens_per_micro_batch);
  }
  return end;
}

}  // namespace

Packer::Packer(const Dataset& dataset, const PackerOptions& options)
    : dataset_(dataset), options_(options) {
  with_context(fmt::format("{}: packer", dataset_.path()), [&] {
    validate_options(options_);
    if (options_.curriculum && options_.curriculum->num_docs() != dataset_.num_docs()) {
      fail("the curriculum ranks {} documents but the dataset has {}", options_.curriculum->num_docs(),
           dataset_.num_docs());
    }
  });
  epoch_order(dataset_.num_docs(), options_, pos_.epoch, &order_);
}

MicroBatch Packer::next() {
  require_tokens(dataset_);
  // A failed read leaves the stream where it was, so a caller that handles the Error can retry.
  const PackerPosition saved = pos_;
  const Plan saved_plan = plan_;
  const uint64_t saved_end = window_end_;
  const uint64_t saved_admitted = window_admitted_;
  const double saved_fraction = admitted_fraction_;
  try {
    with_context(fmt::format("{}: packer", dataset_.path()), [&] {
      if (plan_.empty()) {
        plan_window();
        settle();
      }
      while (pos_.micro_batches % options_.world != options_.rank) advance();
    });
    MicroBatch batch = empty_batch(options_.tokens_per_micro_batch);
    for (const Piece& piece : plan_[pos_.batch_in_window]) {
      append_piece(dataset_, piece.doc, piece.offset, piece.length, &batch);
    }
    admitted_fraction_ = static_cast<double>(window_admitted_) /
                         static_cast<double>(std::max<uint64_t>(1, dataset_.num_docs()));
    advance();
    // Skipping the rest of the round now makes every rank report the same position after the
    // same number of steps, so any rank's saved position resumes all of them.
    while (pos_.micro_batches % options_.world != 0) advance();
    return batch;
  } catch (...) {
    if (pos_.epoch != saved.epoch) epoch_order(dataset_.num_docs(), options_, saved.epoch, &order_);
    pos_ = saved;
    plan_ = saved_plan;
    window_end_ = saved_end;
    window_admitted_ = saved_admitted;
    admitted_fraction_ = saved_fraction;
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
  plan_.clear();  // planned again by the next call to next()
}

// Skipping a micro-batch reads no token: a rank passes over the other ranks' micro-batches at the
// cost of planning their windows from document lengths.
void Packer::advance() {
  ++pos_.micro_batches;
  ++pos_.batch_in_window;
  settle();
}

// A window at the end of an epoch may hold only empty (or, under a curriculum, no eligible)
// documents: plan until one has a batch. The eligible pool cannot change while no micro-batch is
// emitted, so a second epoch wrap without a batch means the pool has no token at all.
void Packer::settle() {
  int wraps = 0;
  while (pos_.batch_in_window >= plan_.size()) {
    pos_.batch_in_window = 0;
    pos_.doc_cursor = window_end_;
    if (pos_.doc_cursor == dataset_.num_docs()) {
      if (++wraps > 1) {
        fail("the {} documents eligible at micro-batch {} hold no token", window_admitted_,
             pos_.micro_batches);
      }
      pos_.doc_cursor = 0;
      ++pos_.epoch;
      epoch_order(dataset_.num_docs(), options_, pos_.epoch, &order_);
    }
    plan_window();
  }
}

void Packer::plan_window() {
  const uint64_t window_tokens = options_.tokens_per_micro_batch * options_.window_micro_batches;
  const Eligible eligible = eligible_at(options_, pos_.micro_batches - pos_.batch_in_window);
  window_admitted_ = eligible.curriculum ? eligible.count : dataset_.num_docs();
  window_end_ = window_end(dataset_, order_, pos_.doc_cursor, window_tokens, eligible);
  plan_ = pack_window(dataset_, options_, order_, pos_.doc_cursor, window_end_, eligible);
}

}  // namespace cadtrain::data
