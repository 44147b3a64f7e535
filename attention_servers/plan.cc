// Turning a schedule into dispatches, server task lists and byte counts.
#include "attention_servers/plan.h"

#include <algorithm>

#include "common/error.h"

namespace cadtrain::attention_servers {

namespace {

// Adds a dispatch, merging it into the previous one when both sides continue contiguously.
void add_dispatch(ServerPlan* sp, Dispatch::Kind kind, uint32_t src, int64_t src_row0, int64_t rows, int64_t dst_row0) {
  if (sp->inputs_size() > 0) {
    Dispatch* last = sp->mutable_inputs(sp->inputs_size() - 1);
    if (last->kind() == kind && last->src_rank() == src && last->src_row0() + last->rows() == src_row0 &&
        last->dst_row0() + last->rows() == dst_row0) {
      last->set_rows(last->rows() + rows);
      return;
    }
  }
  Dispatch* d = sp->add_inputs();
  d->set_kind(kind);
  d->set_src_rank(src);
  d->set_src_row0(src_row0);
  d->set_rows(rows);
  d->set_dst_row0(dst_row0);
}

}  // namespace

AttentionPlan build_plan(const Schedule& s, const RowBytes& bytes, int64_t shard_tokens) {
  AttentionPlan plan;
  fill_plan(s, bytes, shard_tokens, &plan);
  return plan;
}

AttentionPlan* build_plan(const Schedule& s, const RowBytes& bytes, int64_t shard_tokens, google::protobuf::Arena* arena) {
  AttentionPlan* plan = google::protobuf::Arena::CreateMessage<AttentionPlan>(arena);
  fill_plan(s, bytes, shard_tokens, plan);
  return plan;
}

void fill_plan(const Schedule& s, const RowBytes& bytes, int64_t shard_tokens, AttentionPlan* out) {
  const TaskSet& set = s.set;
  AttentionPlan& plan = *out;
  plan.Clear();
  plan.set_trainer_ranks(s.trainer_ranks);
  plan.set_servers(s.servers());
  plan.set_dedicated(s.dedicated);
  plan.set_shard_tokens(shard_tokens);
  plan.set_q_row_bytes(bytes.q);
  plan.set_kv_row_bytes(bytes.kv);
  plan.set_lse_row_bytes(bytes.lse);
  plan.set_target_load(s.target);
  plan.set_tolerance(s.tolerance);
  plan.set_balanced(s.balanced);
  plan.set_reason(s.reason);
  plan.set_imbalance(s.imbalance());
  plan.set_moves(s.moves);
  plan.set_splits(s.splits);

  std::vector<std::vector<uint32_t>> by_server(s.servers());
  for (uint32_t t = 0; t < set.tasks.size(); ++t) by_server[s.server[t]].push_back(t);
  plan.mutable_server_plans()->Reserve(static_cast<int>(s.servers()));
  struct Prefix {
    int32_t doc;
    int64_t row0, end;  // buffer row of the document's first position; end position of the prefix
  };
  std::vector<Prefix> kv;  // per server, by document
  int64_t fwd = 0, charged = 0, nodedup = 0, bwd_keep = 0, bwd_resend = 0;
  uint64_t total_pairs = 0;
  for (uint32_t sv = 0; sv < s.servers(); ++sv) {
    ServerPlan* sp = plan.add_server_plans();
    const uint32_t rank = s.server_rank(sv);
    sp->set_server(sv);
    sp->set_rank(rank);
    auto& list = by_server[sv];
    std::sort(list.begin(), list.end(), [&](uint32_t a, uint32_t b) {
      const Task &x = set.tasks[a], &y = set.tasks[b];
      return x.doc != y.doc ? x.doc < y.doc : x.pos0 < y.pos0;
    });
    // KV buffer: one prefix per document present (the list is in document order).
    kv.clear();
    size_t kv_pieces = 0;
    for (uint32_t t : list) {
      const Task& task = set.tasks[t];
      if (kv.empty() || kv.back().doc != task.doc) {
        kv.push_back({task.doc, 0, task.end_pos()});
        kv_pieces += set.docs[static_cast<size_t>(task.doc)].pieces.size();
      }
      kv.back().end = std::max(kv.back().end, task.end_pos());
    }
    int64_t kv_rows = 0, kv_remote = 0, kv_all = 0;
    for (Prefix& e : kv) {
      e.row0 = kv_rows;
      kv_rows += e.end - set.docs[static_cast<size_t>(e.doc)].pos0;
    }
    sp->mutable_tasks()->Reserve(static_cast<int>(list.size()));
    sp->mutable_inputs()->Reserve(static_cast<int>(list.size() + kv_pieces));
    int64_t q_rows = 0, q_remote = 0;
    size_t at = 0;  // kv entry of the current task's document
    for (uint32_t t : list) {
      const Task& task = set.tasks[t];
      const Document& doc = set.docs[static_cast<size_t>(task.doc)];
      while (kv[at].doc != task.doc) ++at;
      const kernels::AttentionTask k = kernel_task(set, task, q_rows, kv[at].row0);
      ServerTask* st = sp->add_tasks();
      st->set_q0(k.q0);
      st->set_q1(k.q1);
      st->set_k0(k.k0);
      st->set_k1(k.k1);
      st->set_q_pos0(k.q_pos0);
      st->set_k_pos0(k.k_pos0);
      st->set_doc_id(doc.doc_id);
      st->set_owner_rank(task.owner);
      st->set_owner_row0(task.row0);
      st->set_pairs(kernels::task_pairs(k));
      st->set_cost(s.cost[t]);
      total_pairs += st->pairs();
      add_dispatch(sp, Dispatch::QUERY, task.owner, task.row0, task.rows, q_rows);
      if (task.owner != rank) q_remote += task.rows;
      nodedup += rows_not_on(doc, rank, doc.pos0, task.end_pos()) * bytes.kv;
      q_rows += task.rows;
    }
    for (const Prefix& e : kv) {
      const Document& doc = set.docs[static_cast<size_t>(e.doc)];
      for (const Piece& p : doc.pieces) {
        if (p.pos0 >= e.end) break;  // pieces are in position order
        const int64_t hi = std::min(e.end, p.pos0 + p.length);
        add_dispatch(sp, Dispatch::KEY_VALUE, p.rank, p.row0, hi - p.pos0, e.row0 + (p.pos0 - doc.pos0));
        if (p.rank != rank) kv_remote += hi - p.pos0;
        kv_all += hi - p.pos0;
      }
    }
    double load = 0;
    for (uint32_t t : list) load += s.cost[t];
    sp->set_load(load);
    sp->set_q_rows(q_rows);
    sp->set_kv_rows(kv_rows);
    sp->set_q_bytes_in(q_remote * bytes.q);
    sp->set_kv_bytes_in(kv_remote * bytes.kv);
    sp->set_out_bytes(q_remote * (bytes.q + bytes.lse));
    const int64_t q_part = sp->q_bytes_in() + sp->out_bytes();
    fwd += q_part + sp->kv_bytes_in();
    charged += q_part + kv_all * bytes.kv;
    nodedup += q_part;
    const int64_t keep = 2 * q_remote * bytes.q + kv_remote * bytes.kv;  // dO in, dQ and dK/dV out
    bwd_keep += keep;
    bwd_resend += keep + q_part + sp->kv_bytes_in();
  }
  plan.set_total_pairs(total_pairs);
  PlanBytes* b = plan.mutable_bytes();
  b->set_forward(fwd);
  b->set_charging_local_kv(charged);
  b->set_without_dedup(nodedup);
  b->set_backward_keep(bwd_keep);
  b->set_backward_resend(bwd_resend);
}

AttentionPlan plan_step(const BatchLayout& layout, int64_t shard_tokens, const CostModel& cost,
                        const SchedulerOptions& options) {
  return build_plan(schedule_tasks(form_tasks(layout, shard_tokens), cost, options), options.bytes, shard_tokens);
}

}  // namespace cadtrain::attention_servers
