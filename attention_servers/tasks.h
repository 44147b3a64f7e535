// Core-attention tasks of a packed batch (DESIGN section 5): every document is cut into query
// shards of shard_tokens; a task is one query shard with the causal KV prefix it needs and its
// true positions. Servers run any set of tasks in one fused call of kernels/attention_tasks.h.
//
// Input is the layout of every trainer rank (what CoreAttention::prepare receives): its
// sequences in stream order, each a piece of a document (id, first true position, length). Pieces
// with the same document id anywhere in the batch are one attention document when their positions
// are contiguous (DESIGN 6: a long document split across ranks keeps its whole causal prefix under
// CAD); its prefix starts at the first position present in the batch.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention_tasks.h"

namespace cadtrain::attention_servers {

// One sequence of a trainer rank's packed stream; rows are consecutive in stream order.
struct Sequence {
  uint64_t doc_id = 0;
  int64_t first_pos = 0;  // true position of its first token in the document
  int64_t length = 0;
};

// ranks[r] = the sequences of trainer rank r, in stream order.
struct BatchLayout {
  std::vector<std::vector<Sequence>> ranks;
};

// Where a run of a document's positions lives: rows [row0, row0 + length) of trainer `rank`.
struct Piece {
  uint32_t rank = 0;
  int64_t row0 = 0;
  int64_t pos0 = 0;
  int64_t length = 0;
};

// An attention document: positions [pos0, pos1), held by pieces sorted by position.
struct Document {
  uint64_t doc_id = 0;
  int64_t pos0 = 0, pos1 = 0;
  std::vector<Piece> pieces;
  std::vector<Piece> by_rank;  // the same pieces sorted by (rank, position): rows_not_on's index
};

// A query shard: rows [row0, row0 + rows) of trainer `owner`, positions [pos0, pos0 + rows) of
// document `doc`; its KV prefix is the document's positions [docs[doc].pos0, pos0 + rows).
struct Task {
  int32_t doc = 0;  // index into TaskSet::docs
  uint32_t owner = 0;
  int64_t row0 = 0, rows = 0;
  int64_t pos0 = 0;
  int64_t end_pos() const { return pos0 + rows; }
};

struct TaskSet {
  std::vector<Document> docs;  // in order of first appearance (rank, then stream order)
  std::vector<Task> tasks;     // by document, then position
  uint32_t trainer_ranks = 0;
  int64_t total_rows() const;
};

// Cuts every document into shards whose boundaries fall on document positions pos0 + k *
// shard_tokens and on piece boundaries (a shard never spans two ranks). Throws cadtrain::Error
// naming the rank and sequence for a negative position or length, or the document whose pieces
// overlap or leave a gap.
TaskSet form_tasks(const BatchLayout& layout, int64_t shard_tokens);

// The task as the fused kernel sees it on a server whose query buffer holds the task's rows from
// q_row0 and whose KV buffer holds the document's prefix (from its first position) from kv_row0.
kernels::AttentionTask kernel_task(const TaskSet& set, const Task& task, int64_t q_row0, int64_t kv_row0);

// Causal (query, key) pairs of a task: kernels::task_pairs of its kernel form.
uint64_t task_pairs(const TaskSet& set, const Task& task);

// Rows of document positions [a, b) that trainer `rank` does not hold (what it must receive).
int64_t rows_not_on(const Document& doc, uint32_t rank, int64_t a, int64_t b);

}  // namespace cadtrain::attention_servers
