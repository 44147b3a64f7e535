// The CAD runtime's per-micro-batch plan (see cad_step_plan.h).
#include "attention_servers/cad_step_plan.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <tuple>

#include "attention_servers/plan.h"
#include "common/error.h"

namespace cadtrain::attention_servers {
namespace {

// Part of row `row` of a rank (parts are ascending and cover the rank's rows).
size_t part_of(const RankLayout& r, int64_t row) {
  const auto it = std::upper_bound(r.parts.begin(), r.parts.end(), row,
                                   [](int64_t x, const kernels::RowRange& p) { return x < p.end; });
  return static_cast<size_t>(it - r.parts.begin());
}

void check_parts(const std::vector<RankLayout>& ranks) {
  for (size_t r = 0; r < ranks.size(); ++r) {
    const RankLayout& rl = ranks[r];
    if (rl.parts.size() != ranks[0].parts.size()) {
      fail("CAD plan: trainer rank {} has {} nano-batch parts, rank 0 has {}: every rank calls forward for the same "
           "parts",
           r, rl.parts.size(), ranks[0].parts.size());
    }
    int64_t at = 0, rows = 0;
    for (const Sequence& s : rl.seqs) rows += s.length;
    for (size_t p = 0; p < rl.parts.size(); ++p) {
      if (rl.parts[p].begin != at || rl.parts[p].end < at) {
        fail("CAD plan: trainer rank {} part {} is rows [{}, {}): parts must be ascending and contiguous from 0", r, p,
             rl.parts[p].begin, rl.parts[p].end);
      }
      at = rl.parts[p].end;
    }
    if (at != rl.rows || rows != rl.rows) {
      fail("CAD plan: trainer rank {}: parts cover {} rows and sequences {}, but the rank holds {}", r, at, rows,
           rl.rows);
    }
  }
}

// Sequences cut at part boundaries, with document ids replaced by attention-document indices
// (pieces of one id that continue each other in position are one document).
BatchLayout split_and_join(const std::vector<RankLayout>& ranks) {
  BatchLayout out;
  out.ranks.resize(ranks.size());
  struct Key {
    uint64_t doc;
    int64_t pos0;
    size_t rank, index;
  };
  std::vector<Key> keys;
  for (size_t r = 0; r < ranks.size(); ++r) {
    int64_t row = 0;
    for (const Sequence& s : ranks[r].seqs) {
      if (s.length < 0 || s.first_pos < 0) {
        fail("CAD plan: trainer rank {} has a sequence of document {} with length {} at position {}", r, s.doc_id,
             s.length, s.first_pos);
      }
      int64_t a = row;
      while (a < row + s.length) {
        const size_t p = part_of(ranks[r], a);
        const int64_t b = std::min(row + s.length, ranks[r].parts[p].end);
        keys.push_back({s.doc_id, s.first_pos + (a - row), r, out.ranks[r].size()});
        out.ranks[r].push_back({s.doc_id, s.first_pos + (a - row), b - a});
        a = b;
      }
      row += s.length;
    }
  }
  std::sort(keys.begin(), keys.end(), [](const Key& x, const Key& y) {
    return std::tie(x.doc, x.pos0, x.rank, x.index) < std::tie(y.doc, y.pos0, y.rank, y.index);
  });
  // Chains of pieces that continue each other; each chain is one attention document.
  struct Chain {
    uint64_t doc;
    int64_t end;
    uint64_t id;
  };
  std::vector<Chain> open;  // chains of the current doc id
  uint64_t next_id = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i > 0 && keys[i].doc != keys[i - 1].doc) open.clear();
    Sequence& s = out.ranks[keys[i].rank][keys[i].index];
    auto it = std::find_if(open.begin(), open.end(), [&](const Chain& c) { return c.end == s.first_pos; });
    if (it == open.end()) {
      open.push_back({s.doc_id, s.first_pos, next_id++});
      it = open.end() - 1;
    }
    it->end = s.first_pos + s.length;
    s.doc_id = it->id;
  }
  return out;
}

void check_plan(const AttentionPlan& plan, const std::vector<RankLayout>& ranks, size_t group) {
  for (const ServerPlan& sp : plan.server_plans()) {
    for (const Dispatch& d : sp.inputs()) {
      const int64_t cap = d.kind() == Dispatch::QUERY ? sp.q_rows() : sp.kv_rows();
      CADTRAIN_CHECK(d.src_rank() < ranks.size() && d.rows() >= 0 && d.src_row0() >= 0 &&
                         d.src_row0() + d.rows() <= ranks[d.src_rank()].rows && d.dst_row0() >= 0 &&
                         d.dst_row0() + d.rows() <= cap,
                     "CAD plan group {}: server {} dispatch from rank {} rows [{}, +{}) to [{}, +{}) is out of bounds",
                     group, sp.server(), d.src_rank(), d.src_row0(), d.rows(), d.dst_row0(), d.rows());
    }
    for (const ServerTask& t : sp.tasks()) {
      CADTRAIN_CHECK(0 <= t.q0() && t.q0() <= t.q1() && t.q1() <= sp.q_rows() && 0 <= t.k0() && t.k0() <= t.k1() &&
                         t.k1() <= sp.kv_rows(),
                     "CAD plan group {}: server {} task q [{}, {}) k [{}, {}) is outside its buffers ({} q, {} kv rows)",
                     group, sp.server(), t.q0(), t.q1(), t.k0(), t.k1(), sp.q_rows(), sp.kv_rows());
    }
  }
}

}  // namespace

int CadStepPlan::server_index(int world_rank) const {
  const int s = dedicated ? world_rank - static_cast<int>(trainers) : world_rank;
  return s >= 0 && s < static_cast<int>(servers) ? s : -1;
}

CadStepPlan plan_cad_step(std::vector<RankLayout> ranks, const CadPlanOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  CADTRAIN_CHECK(!ranks.empty(), "CAD plan: no trainer ranks");
  check_parts(ranks);
  CadStepPlan out;
  out.trainers = static_cast<uint32_t>(ranks.size());
  out.servers = options.scheduler.servers;
  out.dedicated = options.scheduler.dedicated;
  out.parts = ranks[0].parts.size();

  const TaskSet all = form_tasks(split_and_join(ranks), options.shard_tokens);
  // The group (part) of every task: the latest part holding a row it reads.
  std::vector<TaskSet> by_part(out.parts);
  std::vector<size_t> first_query_part(out.parts, out.parts);
  for (const Task& t : all.tasks) {
    const size_t qpart = part_of(ranks[t.owner], t.row0);
    size_t e = qpart;
    for (const Piece& p : all.docs[static_cast<size_t>(t.doc)].pieces) {
      if (p.pos0 < t.end_pos()) e = std::max(e, part_of(ranks[p.rank], p.row0));
    }
    by_part[e].tasks.push_back(t);
    first_query_part[e] = std::min(first_query_part[e], qpart);
  }
  for (size_t e = 0; e < out.parts; ++e) {
    if (by_part[e].tasks.empty()) continue;
    by_part[e].docs = all.docs;
    by_part[e].trainer_ranks = all.trainer_ranks;
    CadGroup g;
    g.plan = build_plan(schedule_tasks(std::move(by_part[e]), options.cost, options.scheduler),
                        options.scheduler.bytes, options.shard_tokens);
    check_plan(g.plan, ranks, out.groups.size());
    g.forward_part = e;
    g.backward_part = first_query_part[e];
    g.segments.assign(out.trainers, std::vector<std::vector<WireSegment>>(out.servers));
    for (const ServerPlan& sp : g.plan.server_plans()) {
      for (const Dispatch& d : sp.inputs()) {
        g.segments[d.src_rank()][sp.server()].push_back(
            {static_cast<uint64_t>(d.kind()), d.src_row0(), d.rows(), d.dst_row0()});
      }
    }
    out.groups.push_back(std::move(g));
  }
  out.ranks = std::move(ranks);
  out.scheduler_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

uint64_t plan_hash(const CadStepPlan& plan) {
  uint64_t h = 1469598103934665603ull;
  const auto mix = [&](const std::string& bytes) {
    for (const char c : bytes) {
      h ^= static_cast<unsigned char>(c);
      h *= 1099511628211ull;
    }
  };
  for (const CadGroup& g : plan.groups) {
    mix(g.plan.SerializeAsString());
    mix(std::to_string(g.forward_part) + "/" + std::to_string(g.backward_part));
  }
  return h;
}

CadPlanBytes plan_bytes(const CadStepPlan& plan) {
  CadPlanBytes b;
  for (const CadGroup& g : plan.groups) {
    b.forward += g.plan.bytes().forward();
    b.backward_keep += g.plan.bytes().backward_keep();
    b.backward_resend += g.plan.bytes().backward_resend();
  }
  return b;
}

}  // namespace cadtrain::attention_servers
