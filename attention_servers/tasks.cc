// Task formation: group pieces into documents, check they are contiguous, cut query shards.
#include "attention_servers/tasks.h"

#include <algorithm>
#include <map>

#include "common/error.h"

namespace cadtrain::attention_servers {

int64_t TaskSet::total_rows() const {
  int64_t n = 0;
  for (const Task& t : tasks) n += t.rows;
  return n;
}

TaskSet form_tasks(const BatchLayout& layout, int64_t shard_tokens) {
  CADTRAIN_CHECK(shard_tokens > 0, "shard_tokens must be positive, got {}", shard_tokens);
  TaskSet set;
  set.trainer_ranks = static_cast<uint32_t>(layout.ranks.size());
  std::map<uint64_t, int32_t> index;  // doc id -> position in set.docs
  for (size_t r = 0; r < layout.ranks.size(); ++r) {
    int64_t row = 0;
    for (size_t i = 0; i < layout.ranks[r].size(); ++i) {
      const Sequence& s = layout.ranks[r][i];
      if (s.first_pos < 0 || s.length < 0) {
        fail("batch layout: rank {} sequence {} (document {}): first_pos {} and length {} must be >= 0", r, i,
             s.doc_id, s.first_pos, s.length);
      }
      if (s.length > 0) {
        auto [it, fresh] = index.emplace(s.doc_id, static_cast<int32_t>(set.docs.size()));
        if (fresh) set.docs.push_back(Document{s.doc_id, 0, 0, {}, {}});
        set.docs[it->second].pieces.push_back(Piece{static_cast<uint32_t>(r), row, s.first_pos, s.length});
      }
      row += s.length;
    }
  }
  for (size_t d = 0; d < set.docs.size(); ++d) {
    Document& doc = set.docs[d];
    std::stable_sort(doc.pieces.begin(), doc.pieces.end(),
                     [](const Piece& a, const Piece& b) { return a.pos0 < b.pos0; });
    doc.pos0 = doc.pieces.front().pos0;
    int64_t next = doc.pos0;
    for (const Piece& p : doc.pieces) {
      if (p.pos0 != next) {
        fail("batch layout: document {}: the piece on rank {} starts at position {} but the previous piece ends at {} "
             "({}): a shard's causal prefix must be in the batch exactly once",
             doc.doc_id, p.rank, p.pos0, next, p.pos0 < next ? "overlap" : "gap");
      }
      next += p.length;
    }
    doc.pos1 = next;
    doc.by_rank = doc.pieces;
    std::stable_sort(doc.by_rank.begin(), doc.by_rank.end(),
                     [](const Piece& a, const Piece& b) { return a.rank < b.rank; });
    for (const Piece& p : doc.pieces) {
      int64_t pos = p.pos0;
      while (pos < p.pos0 + p.length) {
        const int64_t boundary = doc.pos0 + ((pos - doc.pos0) / shard_tokens + 1) * shard_tokens;
        const int64_t end = std::min(boundary, p.pos0 + p.length);
        set.tasks.push_back(Task{static_cast<int32_t>(d), p.rank, p.row0 + (pos - p.pos0), end - pos, pos});
        pos = end;
      }
    }
  }
  return set;
}

kernels::AttentionTask kernel_task(const TaskSet& set, const Task& task, int64_t q_row0, int64_t kv_row0) {
  const Document& doc = set.docs[static_cast<size_t>(task.doc)];
  kernels::AttentionTask k;
  k.q0 = q_row0;
  k.q1 = q_row0 + task.rows;
  k.k0 = kv_row0;
  k.k1 = kv_row0 + (task.end_pos() - doc.pos0);
  k.q_pos0 = task.pos0;
  k.k_pos0 = doc.pos0;
  k.causal = true;
  return k;
}

uint64_t task_pairs(const TaskSet& set, const Task& task) { return kernels::task_pairs(kernel_task(set, task, 0, 0)); }

int64_t rows_not_on(const Document& doc, uint32_t rank, int64_t a, int64_t b) {
  if (b <= a) return 0;
  int64_t held = 0;
  auto it = std::lower_bound(doc.by_rank.begin(), doc.by_rank.end(), rank,
                             [](const Piece& p, uint32_t r) { return p.rank < r; });
  for (; it != doc.by_rank.end() && it->rank == rank; ++it) {
    const Piece& p = *it;
    const int64_t lo = std::max(a, p.pos0), hi = std::min(b, p.pos0 + p.length);
    if (hi > lo) held += hi - lo;
  }
  return (b - a) - held;
}

}  // namespace cadtrain::attention_servers
