// The greedy communication-aware balancer (see scheduler.h for the algorithm).
#include "attention_servers/scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "common/error.h"

namespace cadtrain::attention_servers {

double Schedule::imbalance() const {
  if (load.empty()) return 1.0;
  double sum = 0, mx = 0;
  for (double l : load) {
    sum += l;
    mx = std::max(mx, l);
  }
  return sum > 0 ? mx / (sum / static_cast<double>(load.size())) : 1.0;
}

namespace {

// A candidate move: rows [first, first + rows) of task `task` (all of it, its head or its tail).
struct Move {
  uint32_t task = 0;
  int64_t rows = 0;
  bool head = true;  // the moved rows are the task's first rows (or all of them)
  double cost = 0;
  double bytes = 0;  // change of the total bytes moved if this move is made
};

class Balancer {
 public:
  // lpt: ignore where the tasks live; cut them into pieces of at most max(eps F, one split) and
  // place the pieces largest first on the least loaded server (longest processing time first).
  Balancer(Schedule& s, const CostModel& cost, const SchedulerOptions& o, bool lpt) : s_(s), model_(cost), opt_(o) {
    lists_.resize(s_.servers());
    double total = 0;
    for (const Task& t : s_.set.tasks) total += cost_of(t);
    s_.target = total / static_cast<double>(s_.servers());
    if (lpt) {
      cut_for_lpt(std::max(s_.tolerance, 0.02) * s_.target);
    }
    const size_t n = s_.set.tasks.size();
    s_.cost.resize(n);
    s_.server.resize(n);
    for (uint32_t t = 0; t < n; ++t) s_.cost[t] = cost_of(s_.set.tasks[t]);
    if (lpt) {
      std::vector<uint32_t> order(n);
      for (uint32_t t = 0; t < n; ++t) order[t] = t;
      std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return s_.cost[a] > s_.cost[b]; });
      std::set<std::pair<double, uint32_t>> least;
      for (uint32_t sv = 0; sv < s_.servers(); ++sv) least.insert({0.0, sv});
      for (uint32_t t : order) {
        const auto [l, sv] = *least.begin();
        least.erase(least.begin());
        place(t, sv);
        least.insert({l + s_.cost[t], sv});
      }
    } else {
      for (uint32_t t = 0; t < n; ++t) {
        const Task& task = s_.set.tasks[t];
        const uint32_t home = o.dedicated ? static_cast<uint32_t>(static_cast<uint64_t>(task.owner) * o.servers /
                                                                  std::max<uint32_t>(1, s_.trainer_ranks))
                                          : task.owner;
        place(t, home);
      }
    }
    for (uint32_t sv = 0; sv < s_.servers(); ++sv) by_load_.insert({s_.load[sv], sv});
    exhausted_.assign(s_.servers(), false);
  }

  void cut_for_lpt(double cap) {
    std::vector<Task> out;
    for (Task t : s_.set.tasks) {
      while (t.rows > opt_.split_rows && cost_of(t) > cap) {
        const int64_t k = std::max<int64_t>(1, largest_piece(t, true, cap));
        Task head = t;
        head.rows = k * opt_.split_rows;
        out.push_back(head);
        t.row0 += head.rows;
        t.pos0 += head.rows;
        t.rows -= head.rows;
        ++s_.splits;
      }
      out.push_back(t);
    }
    s_.set.tasks = std::move(out);
  }

  void run() {
    const double F = s_.target, eps = s_.tolerance;
    const double slack = 1e-9 * F;
    const uint64_t cap = opt_.max_moves ? opt_.max_moves : 64 * (s_.set.tasks.size() + s_.servers());
    while (true) {
      const double lo = by_load_.begin()->first, hi = by_load_.rbegin()->first;
      if (hi <= (1 + eps) * F + slack && lo >= (1 - eps) * F - slack) {
        s_.balanced = true;
        return;
      }
      if (s_.moves >= cap) {
        s_.reason = fmt::format("stopped after {} moves (the cap) with imbalance {:.4f}", s_.moves, s_.imbalance());
        return;
      }
      uint32_t src = 0;
      bool found = false;
      for (auto it = by_load_.rbegin(); it != by_load_.rend() && it->first > F + slack; ++it) {
        if (!exhausted_[it->second]) {
          src = it->second;
          found = true;
          break;
        }
      }
      const uint32_t dst = by_load_.begin()->second;
      if (!found || src == dst) break;
      Move m;
      if (!best_move(src, dst, &m)) {
        exhausted_[src] = true;
        continue;
      }
      apply(src, dst, m);
    }
    s_.reason = explain();
  }

 private:
  double cost_of(const Task& t) const { return model_.cost(kernel_task(s_.set, t, 0, 0)); }
  uint32_t rank(uint32_t server) const { return s_.server_rank(server); }
  std::map<int64_t, int>& ends(uint32_t server, int32_t doc) {
    return ends_[static_cast<uint64_t>(server) * s_.set.docs.size() + static_cast<uint64_t>(doc)];
  }
  int64_t max_end(uint32_t server, int32_t doc) {
    const auto it = ends_.find(static_cast<uint64_t>(server) * s_.set.docs.size() + static_cast<uint64_t>(doc));
    return it == ends_.end() || it->second.empty() ? s_.set.docs[static_cast<size_t>(doc)].pos0
                                                    : it->second.rbegin()->first;
  }
  int64_t kv_rows(uint32_t server, int32_t doc, int64_t end) const {
    const Document& d = s_.set.docs[static_cast<size_t>(doc)];
    return rows_not_on(d, rank(server), d.pos0, end);
  }
  double q_bytes(int64_t rows) const {
    return static_cast<double>(rows * (opt_.bytes.forward_query() + opt_.bytes.forward_return()));
  }

  void place(uint32_t t, uint32_t sv) {
    s_.server[t] = sv;
    s_.load[sv] += s_.cost[t];
    lists_[sv].push_back(t);
    ends(sv, s_.set.tasks[t].doc)[s_.set.tasks[t].end_pos()]++;
  }
  void unplace(uint32_t t) {
    const uint32_t sv = s_.server[t];
    s_.load[sv] -= s_.cost[t];
    auto& list = lists_[sv];
    list.erase(std::find(list.begin(), list.end(), t));
    auto& e = ends(sv, s_.set.tasks[t].doc);
    if (--e[s_.set.tasks[t].end_pos()] == 0) e.erase(s_.set.tasks[t].end_pos());
  }

  // Cost of the first (head) or last rows of task t.
  double piece_cost(const Task& t, int64_t rows, bool head) const {
    Task p = t;
    p.rows = rows;
    if (!head) {
      p.row0 += t.rows - rows;
      p.pos0 += t.rows - rows;
    }
    return cost_of(p);
  }

  // Bytes the move adds minus bytes it saves (Q out + O/LSE back, and KV not yet on the server).
  double move_bytes(uint32_t src, uint32_t dst, const Move& m) {
    const Task& t = s_.set.tasks[m.task];
    const int64_t piece_end = m.head ? t.pos0 + m.rows : t.end_pos();
    double delta = 0;
    if (t.owner != rank(dst)) delta += q_bytes(m.rows);
    if (t.owner != rank(src)) delta -= q_bytes(m.rows);
    const int64_t dst_end = max_end(dst, t.doc);
    if (piece_end > dst_end) {
      delta += static_cast<double>((kv_rows(dst, t.doc, piece_end) - kv_rows(dst, t.doc, dst_end)) * opt_.bytes.kv);
    }
    // The source keeps the prefix up to its other tasks' ends (and to this task's remaining rows).
    const int64_t src_end = max_end(src, t.doc);
    if (t.end_pos() == src_end && !(m.head && m.rows < t.rows)) {
      auto& e = ends(src, t.doc);
      int64_t after = s_.set.docs[static_cast<size_t>(t.doc)].pos0;
      if (e.at(src_end) > 1) {
        after = src_end;
      } else if (e.size() > 1) {
        after = std::prev(e.end(), 2)->first;
      }
      if (m.rows < t.rows) after = std::max(after, t.end_pos() - m.rows);
      delta -= static_cast<double>((kv_rows(src, t.doc, src_end) - kv_rows(src, t.doc, after)) * opt_.bytes.kv);
    }
    return delta;
  }

  // Largest k >= 1 with cost(piece of k * split_rows rows) <= want, k * split_rows < rows; 0 if none.
  int64_t largest_piece(const Task& t, bool head, double want) const {
    const int64_t g = opt_.split_rows, kmax = (t.rows - 1) / g;
    int64_t lo = 0, hi = kmax;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (piece_cost(t, mid * g, head) <= want) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  bool best_move(uint32_t src, uint32_t dst, Move* out) {
    const double F = s_.target, a = s_.load[src], b = s_.load[dst];
    // The destination may end anywhere up to (1 + eps) F; the source never drops below F.
    const double want = std::min(a - F, (1 + s_.tolerance) * F - b);
    const double dev = std::max(a - F, F - b);
    std::vector<Move> fits;
    // Fallback when nothing fits in `want`: the move that most lowers the pair's larger deviation.
    bool have_fb = false;
    double best_dev = dev;
    Move fb;
    auto consider = [&](Move m) {
      if (m.cost <= 0) return;
      if (m.cost <= want) {
        fits.push_back(m);
      } else if (m.cost < a - b) {
        const double d = std::max(std::abs(a - m.cost - F), std::abs(b + m.cost - F));
        if (d < best_dev) {
          best_dev = d;
          fb = m;
          have_fb = true;
        }
      }
    };
    std::vector<uint32_t> order = lists_[src];
    std::sort(order.begin(), order.end());
    for (uint32_t t : order) {
      const Task& task = s_.set.tasks[t];
      consider(Move{t, task.rows, true, s_.cost[t], 0});
      if (s_.cost[t] <= want || task.rows <= opt_.split_rows) continue;
      const int64_t g = opt_.split_rows, kmax = (task.rows - 1) / g;
      for (bool head : {true, false}) {
        const int64_t k = largest_piece(task, head, want);
        if (k > 0) consider(Move{t, k * g, head, piece_cost(task, k * g, head), 0});
        if (k < kmax) consider(Move{t, (k + 1) * g, head, piece_cost(task, (k + 1) * g, head), 0});
      }
    }
    if (fits.empty()) {
      if (have_fb) *out = fb;
      return have_fb;
    }
    // Fewest bytes per unit of cost among the large moves (at least half the largest that fits):
    // moving small pieces first would strand the expensive ones where no gap can take them.
    double largest = 0;
    for (const Move& m : fits) largest = std::max(largest, m.cost);
    double best_score = std::numeric_limits<double>::infinity();
    for (Move& m : fits) {
      if (m.cost < 0.5 * largest) continue;
      m.bytes = move_bytes(src, dst, m);
      const double score = m.bytes / m.cost;
      if (score < best_score) {
        best_score = score;
        *out = m;
      }
    }
    return true;
  }

  void apply(uint32_t src, uint32_t dst, const Move& m) {
    by_load_.erase({s_.load[src], src});
    by_load_.erase({s_.load[dst], dst});
    const Task whole = s_.set.tasks[m.task];
    unplace(m.task);
    if (m.rows == whole.rows) {
      place(m.task, dst);
    } else {
      Task moved = whole, kept = whole;
      moved.rows = m.rows;
      kept.rows = whole.rows - m.rows;
      if (m.head) {
        kept.row0 += m.rows;
        kept.pos0 += m.rows;
      } else {
        moved.row0 += kept.rows;
        moved.pos0 += kept.rows;
      }
      s_.set.tasks[m.task] = kept;
      s_.cost[m.task] = cost_of(kept);
      place(m.task, src);
      s_.set.tasks.push_back(moved);
      s_.cost.push_back(cost_of(moved));
      s_.server.push_back(dst);
      place(static_cast<uint32_t>(s_.set.tasks.size() - 1), dst);
      ++s_.splits;
    }
    ++s_.moves;
    by_load_.insert({s_.load[src], src});
    by_load_.insert({s_.load[dst], dst});
  }

  std::string explain() const {
    const double F = s_.target, eps = s_.tolerance;
    const uint32_t hi = by_load_.rbegin()->second, lo = by_load_.begin()->second;
    // The most expensive piece that cannot be split further: the last split_rows rows of a task.
    double biggest = 0;
    int64_t pieces = 0;
    uint32_t at = 0;
    for (uint32_t t = 0; t < s_.set.tasks.size(); ++t) {
      const Task& task = s_.set.tasks[t];
      pieces += (task.rows + opt_.split_rows - 1) / opt_.split_rows;
      const int64_t last = task.rows - (task.rows - 1) / opt_.split_rows * opt_.split_rows;
      const double c = piece_cost(task, last, false);
      if (c > biggest) {
        biggest = c;
        at = t;
      }
    }
    if (biggest > (1 + eps) * F) {
      const Task& t = s_.set.tasks[at];
      return fmt::format(
          "infeasible: an indivisible piece (document {} positions [{}, {}), split_rows {}) costs {:.4g} = {:.3f} F, "
          "above the tolerated (1 + {}) F; fewer servers or smaller split_rows would help",
          s_.set.docs[static_cast<size_t>(t.doc)].doc_id, t.end_pos() - (t.rows - (t.rows - 1) / opt_.split_rows * opt_.split_rows),
          t.end_pos(), opt_.split_rows, biggest, biggest / F, eps);
    }
    if (pieces < static_cast<int64_t>(s_.servers())) {
      return fmt::format("infeasible: only {} indivisible pieces (split_rows {}) for {} servers, so some servers stay "
                         "empty",
                         pieces, opt_.split_rows, s_.servers());
    }
    return fmt::format(
        "not balanced within {}: server {} at {:.4f} F and server {} at {:.4f} F, and no piece of split_rows {} rows "
        "moves between them without overshooting; a finer split_rows or a larger tolerance would help",
        eps, hi, s_.load[hi] / F, lo, s_.load[lo] / F, opt_.split_rows);
  }

  Schedule& s_;
  const CostModel& model_;
  const SchedulerOptions& opt_;
  std::vector<std::vector<uint32_t>> lists_;
  std::unordered_map<uint64_t, std::map<int64_t, int>> ends_;
  std::set<std::pair<double, uint32_t>> by_load_;
  std::vector<bool> exhausted_;
};

}  // namespace

namespace {

// Rejoins pieces of one shard that ended on the same server (fewer, longer kernel tasks).
void merge_adjacent(Schedule& s, const CostModel& cost) {
  const size_t n = s.set.tasks.size();
  std::vector<uint32_t> order(n);
  for (uint32_t t = 0; t < n; ++t) order[t] = t;
  auto key = [&](uint32_t t) {
    const Task& x = s.set.tasks[t];
    return std::make_tuple(s.server[t], x.doc, x.owner, x.pos0);
  };
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return key(a) < key(b); });
  std::vector<Task> tasks;
  std::vector<uint32_t> server;
  for (uint32_t t : order) {
    const Task& x = s.set.tasks[t];
    if (!tasks.empty()) {
      Task& last = tasks.back();
      if (server.back() == s.server[t] && last.doc == x.doc && last.owner == x.owner && last.end_pos() == x.pos0 &&
          last.row0 + last.rows == x.row0 && last.rows + x.rows <= s.shard_rows) {
        last.rows += x.rows;
        continue;
      }
    }
    tasks.push_back(x);
    server.push_back(s.server[t]);
  }
  s.set.tasks = std::move(tasks);
  s.server = std::move(server);
  s.cost.assign(s.set.tasks.size(), 0.0);
  std::fill(s.load.begin(), s.load.end(), 0.0);
  for (size_t t = 0; t < s.set.tasks.size(); ++t) {
    s.cost[t] = cost.cost(kernel_task(s.set, s.set.tasks[t], 0, 0));
    s.load[s.server[t]] += s.cost[t];
  }
}

double worst_deviation(const Schedule& s) {
  double d = 0;
  for (double l : s.load) d = std::max(d, std::abs(l - s.target));
  return d;
}

}  // namespace

Schedule schedule_tasks(TaskSet set, const CostModel& cost, const SchedulerOptions& options) {
  if (options.servers == 0) fail("scheduler: servers must be >= 1");
  if (!options.dedicated && options.servers != set.trainer_ranks) {
    fail("scheduler: INPLACE mode needs one server per trainer rank ({} servers for {} trainer ranks)", options.servers,
         set.trainer_ranks);
  }
  if (options.split_rows < 1) fail("scheduler: split_rows must be >= 1, got {}", options.split_rows);
  if (!(options.tolerance >= 0)) fail("scheduler: tolerance must be >= 0, got {}", options.tolerance);
  int64_t shard_rows = 0;
  for (const Task& t : set.tasks) shard_rows = std::max(shard_rows, t.rows);
  auto attempt = [&](bool lpt) {
    Schedule s;
    s.set = set;
    s.trainer_ranks = s.set.trainer_ranks;
    s.dedicated = options.dedicated;
    s.tolerance = options.tolerance;
    s.shard_rows = shard_rows;
    s.load.assign(options.servers, 0.0);
    if (s.set.tasks.empty()) {
      s.balanced = true;
      return s;
    }
    Balancer balancer(s, cost, options, lpt);
    balancer.run();
    merge_adjacent(s, cost);
    return s;
  };
  Schedule home = attempt(false);
  if (home.balanced) return home;
  // The moves from where the data lives got stuck (expensive pieces stranded): start again from a
  // largest-first placement that ignores locality, and keep it if it is better balanced.
  Schedule lpt = attempt(true);
  if (lpt.balanced || worst_deviation(lpt) < worst_deviation(home)) {
    lpt.moves += home.moves;
    if (!lpt.balanced) lpt.reason += " (after a locality-ignoring largest-first restart)";
    return lpt;
  }
  return home;
}

}  // namespace cadtrain::attention_servers
