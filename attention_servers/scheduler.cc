// The greedy communication-aware balancer (see scheduler.h for the algorithm).
#include "attention_servers/scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <tuple>

#include "common/error.h"
#include "kernels/attention_task_math.h"

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

// Cost of a task: its causal pairs in closed form (what kernels::task_pairs computes), or the
// calibrated model's effective pairs.
double task_cost(const TaskSet& set, const Task& t, const CostModel& model) {
  if (!model.calibrated()) {
    const int64_t before = t.pos0 - set.docs[static_cast<size_t>(t.doc)].pos0;
    return static_cast<double>(
        static_cast<uint64_t>(kernels::task_math::pairs_of_rows(0, t.rows, before, before + t.rows, true)));
  }
  return model.cost(kernel_task(set, t, 0, 0));
}

// A candidate move: rows [first, first + rows) of task `task` (all of it, its head or its tail).
struct Move {
  uint32_t task = 0;
  int64_t rows = 0;
  bool head = true;  // the moved rows are the task's first rows (or all of them)
  double cost = 0;
  double bytes = 0;  // change of the total bytes moved if this move is made
};

// Servers keyed by (load, index) in a binary heap with each server's slot indexed, so a move
// re-keys its two servers in O(log servers) without allocating. Keys are a total order, so the top
// is the same server an ordered set's first (Min) or last (!Min) element would be.
template <bool Min>
class LoadHeap {
 public:
  void build(const std::vector<double>& load, const std::vector<uint32_t>& members) {
    load_ = &load;
    heap_ = members;
    slot_.assign(load.size(), kAbsent);
    for (size_t i = 0; i < heap_.size(); ++i) slot_[heap_[i]] = i;
    for (size_t i = heap_.size() / 2; i-- > 0;) down(i);
  }
  bool empty() const { return heap_.empty(); }
  uint32_t top() const { return heap_.front(); }
  // Server sv's load changed (no-op when it is not a member).
  void update(uint32_t sv) {
    const size_t i = slot_[sv];
    if (i == kAbsent) return;
    up(i);
    down(slot_[sv]);
  }
  void erase(uint32_t sv) {
    const size_t i = slot_[sv];
    if (i == kAbsent) return;
    swap_slots(i, heap_.size() - 1);
    heap_.pop_back();
    slot_[sv] = kAbsent;
    if (i < heap_.size()) {
      up(i);
      down(slot_[heap_[i]]);
    }
  }

 private:
  static constexpr size_t kAbsent = ~size_t{0};
  // a sits above b in the heap.
  bool above(uint32_t a, uint32_t b) const {
    const double la = (*load_)[a], lb = (*load_)[b];
    return Min ? (la < lb || (la == lb && a < b)) : (la > lb || (la == lb && a > b));
  }
  void swap_slots(size_t i, size_t j) {
    std::swap(heap_[i], heap_[j]);
    slot_[heap_[i]] = i;
    slot_[heap_[j]] = j;
  }
  void up(size_t i) {
    while (i > 0 && above(heap_[i], heap_[(i - 1) / 2])) {
      swap_slots(i, (i - 1) / 2);
      i = (i - 1) / 2;
    }
  }
  void down(size_t i) {
    while (true) {
      size_t best = i;
      for (size_t c = 2 * i + 1; c <= 2 * i + 2 && c < heap_.size(); ++c) {
        if (above(heap_[c], heap_[best])) best = c;
      }
      if (best == i) return;
      swap_slots(i, best);
      i = best;
    }
  }
  const std::vector<double>* load_ = nullptr;
  std::vector<uint32_t> heap_;
  std::vector<size_t> slot_;
};

class Balancer {
 public:
  // lpt: ignore where the tasks live; cut them into pieces of at most max(eps F, one split) and
  // place the pieces largest first on the least loaded server (longest processing time first).
  Balancer(Schedule& s, const CostModel& cost, const SchedulerOptions& o, bool lpt) : s_(s), model_(cost), opt_(o) {
    lists_.resize(s_.servers());
    ends_.resize(s_.servers());
    const size_t n0 = s_.set.tasks.size();
    s_.cost.resize(n0);
    double total = 0;
    for (uint32_t t = 0; t < n0; ++t) {
      s_.cost[t] = cost_of(s_.set.tasks[t]);
      total += s_.cost[t];
    }
    s_.target = total / static_cast<double>(s_.servers());
    if (lpt) {
      cut_for_lpt(std::max(s_.tolerance, 0.02) * s_.target);
      s_.cost.resize(s_.set.tasks.size());
      for (uint32_t t = 0; t < s_.set.tasks.size(); ++t) s_.cost[t] = cost_of(s_.set.tasks[t]);
    }
    const size_t n = s_.set.tasks.size();
    s_.server.resize(n);
    if (lpt) {
      std::vector<uint32_t> order(n);
      for (uint32_t t = 0; t < n; ++t) order[t] = t;
      std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return s_.cost[a] > s_.cost[b]; });
      // Min-heap of (load, server): the same least loaded server as an ordered set would give.
      std::priority_queue<std::pair<double, uint32_t>, std::vector<std::pair<double, uint32_t>>, std::greater<>> least;
      for (uint32_t sv = 0; sv < s_.servers(); ++sv) least.push({0.0, sv});
      for (uint32_t t : order) {
        const auto [l, sv] = least.top();
        least.pop();
        assign(t, sv);
        least.push({l + s_.cost[t], sv});
      }
    } else {
      for (uint32_t t = 0; t < n; ++t) {
        const Task& task = s_.set.tasks[t];
        const uint32_t home = o.dedicated ? static_cast<uint32_t>(static_cast<uint64_t>(task.owner) * o.servers /
                                                                  std::max<uint32_t>(1, s_.trainer_ranks))
                                          : task.owner;
        assign(t, home);
      }
    }
    build_lists();
    std::vector<uint32_t> all(s_.servers());
    for (uint32_t sv = 0; sv < s_.servers(); ++sv) all[sv] = sv;
    least_.build(s_.load, all);
    most_.build(s_.load, all);
    givers_.build(s_.load, all);
  }

  // Every server's task list (by index) and end positions, from s_.server, in one pass.
  void build_lists() {
    std::vector<uint32_t> count(s_.servers(), 0);
    for (uint32_t sv : s_.server) ++count[sv];
    for (uint32_t sv = 0; sv < s_.servers(); ++sv) {
      lists_[sv].reserve(count[sv] + 8);  // room for a few moves in without reallocating
      ends_[sv].reserve(count[sv] + 8);
    }
    for (uint32_t t = 0; t < s_.set.tasks.size(); ++t) {
      const uint32_t sv = s_.server[t];
      lists_[sv].push_back(t);
      ends_[sv].push_back({s_.set.tasks[t].doc, s_.set.tasks[t].end_pos()});
    }
    for (auto& e : ends_) std::sort(e.begin(), e.end());
  }

  void cut_for_lpt(double cap) {
    std::vector<Task> out;
    out.reserve(s_.set.tasks.size());
    for (uint32_t i = 0; i < s_.set.tasks.size(); ++i) {
      Task t = s_.set.tasks[i];
      double c = s_.cost[i];
      while (t.rows > opt_.split_rows && c > cap) {
        const int64_t k = std::max<int64_t>(1, largest_piece(t, true, cap, nullptr));
        Task head = t;
        head.rows = k * opt_.split_rows;
        out.push_back(head);
        t.row0 += head.rows;
        t.pos0 += head.rows;
        t.rows -= head.rows;
        c = cost_of(t);
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
      const double lo = s_.load[least_.top()], hi = s_.load[most_.top()];
      if (hi <= (1 + eps) * F + slack && lo >= (1 - eps) * F - slack) {
        s_.balanced = true;
        return;
      }
      if (s_.moves >= cap) {
        s_.reason = fmt::format("stopped after {} moves (the cap) with imbalance {:.4f}", s_.moves, s_.imbalance());
        return;
      }
      // The most loaded server that can still give (above F, not exhausted) and the least loaded.
      if (givers_.empty() || s_.load[givers_.top()] <= F + slack) break;
      const uint32_t src = givers_.top();
      const uint32_t dst = least_.top();
      if (src == dst) break;
      Move m;
      if (!best_move(src, dst, &m)) {
        givers_.erase(src);
        continue;
      }
      apply(src, dst, m);
    }
    s_.reason = explain();
  }

 private:
  double cost_of(const Task& t) const { return task_cost(s_.set, t, model_); }
  uint32_t rank(uint32_t server) const { return s_.server_rank(server); }
  // ends_[server]: the end positions of the server's tasks as (document, end), sorted, with
  // repeats (a multiset): the KV prefix a server needs of a document ends at the largest.
  using End = std::pair<int32_t, int64_t>;
  // One past the last entry of document `doc` on `server`.
  std::vector<End>::const_iterator doc_end(uint32_t server, int32_t doc) const {
    const auto& e = ends_[server];
    return std::lower_bound(e.begin(), e.end(), End{doc + 1, std::numeric_limits<int64_t>::min()});
  }
  int64_t max_end(uint32_t server, int32_t doc) const {
    const auto it = doc_end(server, doc);
    return it == ends_[server].begin() || std::prev(it)->first != doc ? s_.set.docs[static_cast<size_t>(doc)].pos0
                                                                      : std::prev(it)->second;
  }
  int64_t kv_rows(uint32_t server, int32_t doc, int64_t end) const {
    const Document& d = s_.set.docs[static_cast<size_t>(doc)];
    return rows_not_on(d, rank(server), d.pos0, end);
  }
  double q_bytes(int64_t rows) const {
    return static_cast<double>(rows * (opt_.bytes.forward_query() + opt_.bytes.forward_return()));
  }

  // Initial placement: server and load only (build_lists adds the lists afterwards).
  void assign(uint32_t t, uint32_t sv) {
    s_.server[t] = sv;
    s_.load[sv] += s_.cost[t];
  }
  void place(uint32_t t, uint32_t sv) {
    s_.server[t] = sv;
    s_.load[sv] += s_.cost[t];
    auto& list = lists_[sv];
    list.insert(std::lower_bound(list.begin(), list.end(), t), t);
    auto& e = ends_[sv];
    const End key{s_.set.tasks[t].doc, s_.set.tasks[t].end_pos()};
    e.insert(std::upper_bound(e.begin(), e.end(), key), key);
  }
  void unplace(uint32_t t) {
    const uint32_t sv = s_.server[t];
    s_.load[sv] -= s_.cost[t];
    auto& list = lists_[sv];
    list.erase(std::lower_bound(list.begin(), list.end(), t));
    auto& e = ends_[sv];
    e.erase(std::lower_bound(e.begin(), e.end(), End{s_.set.tasks[t].doc, s_.set.tasks[t].end_pos()}));
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
  double move_bytes(uint32_t src, uint32_t dst, const Move& m) const {
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
      // The source's ends of this document, last = src_end: the prefix it keeps ends at src_end
      // when another task also ends there, else at the next smaller end (or nothing).
      const auto last = std::prev(doc_end(src, t.doc));
      int64_t after = s_.set.docs[static_cast<size_t>(t.doc)].pos0;
      if (last != ends_[src].begin() && std::prev(last)->first == t.doc) after = std::prev(last)->second;
      if (m.rows < t.rows) after = std::max(after, t.end_pos() - m.rows);
      delta -= static_cast<double>((kv_rows(src, t.doc, src_end) - kv_rows(src, t.doc, after)) * opt_.bytes.kv);
    }
    return delta;
  }

  // Largest k >= 1 with cost(piece of k * split_rows rows) <= want, k * split_rows < rows; 0 if
  // none. *cost (when given) gets that piece's cost.
  int64_t largest_piece(const Task& t, bool head, double want, double* cost) const {
    const int64_t g = opt_.split_rows, kmax = (t.rows - 1) / g;
    int64_t lo = 0, hi = kmax;
    double lo_cost = 0;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      const double c = piece_cost(t, mid * g, head);
      if (c <= want) {
        lo = mid;
        lo_cost = c;
      } else {
        hi = mid - 1;
      }
    }
    if (cost) *cost = lo_cost;
    return lo;
  }

  // The move of DESIGN section 5 from src to dst. Candidates are the whole tasks of src and, for
  // a task too expensive to move whole, its largest head and tail pieces that fit; a piece one
  // split larger never fits (largest_piece's bound), so it only matters as a fallback when
  // nothing fits, and is priced only then.
  bool best_move(uint32_t src, uint32_t dst, Move* out) {
    const double F = s_.target, a = s_.load[src], b = s_.load[dst];
    // The destination may end anywhere up to (1 + eps) F; the source never drops below F.
    const double want = std::min(a - F, (1 + s_.tolerance) * F - b);
    const int64_t g = opt_.split_rows;
    const std::vector<uint32_t>& order = lists_[src];  // sorted by task index
    fits_.clear();
    for (uint32_t t : order) {
      const Task& task = s_.set.tasks[t];
      if (s_.cost[t] <= want) {
        if (s_.cost[t] > 0) fits_.push_back(Move{t, task.rows, true, s_.cost[t], 0});
        continue;
      }
      if (task.rows <= g) continue;
      for (bool head : {true, false}) {
        double c = 0;
        const int64_t k = largest_piece(task, head, want, &c);
        if (k > 0 && c > 0) fits_.push_back(Move{t, k * g, head, c, 0});
      }
    }
    if (fits_.empty()) {
      // The move that most lowers the pair's larger deviation, among moves that overshoot `want`
      // but not the gap a - b (every piece here is too large for `want`: no k > 0 piece fitted).
      bool have_fb = false;
      double best_dev = std::max(a - F, F - b);
      auto consider = [&](const Move& m) {
        if (m.cost <= 0 || !(m.cost < a - b)) return;
        const double d = std::max(std::abs(a - m.cost - F), std::abs(b + m.cost - F));
        if (d < best_dev) {
          best_dev = d;
          *out = m;
          have_fb = true;
        }
      };
      for (uint32_t t : order) {
        const Task& task = s_.set.tasks[t];
        consider(Move{t, task.rows, true, s_.cost[t], 0});
        if (s_.cost[t] <= want || task.rows <= g) continue;
        for (bool head : {true, false}) consider(Move{t, g, head, piece_cost(task, g, head), 0});
      }
      return have_fb;
    }
    // Fewest bytes per unit of cost among the large moves (at least half the largest that fits):
    // moving small pieces first would strand the expensive ones where no gap can take them.
    double largest = 0;
    for (const Move& m : fits_) largest = std::max(largest, m.cost);
    double best_score = std::numeric_limits<double>::infinity();
    for (Move& m : fits_) {
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
    for (uint32_t sv : {src, dst}) {
      least_.update(sv);
      most_.update(sv);
      givers_.update(sv);
    }
  }

  std::string explain() const {
    const double F = s_.target, eps = s_.tolerance;
    const uint32_t hi = most_.top(), lo = least_.top();
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
  std::vector<std::vector<uint32_t>> lists_;  // [servers] task indices, sorted
  std::vector<std::vector<End>> ends_;        // [servers]
  LoadHeap<true> least_;                      // every server, least loaded on top
  LoadHeap<false> most_;                      // every server, most loaded on top
  LoadHeap<false> givers_;                    // servers whose best_move has not come back empty
  std::vector<Move> fits_;                    // best_move's scratch
};

}  // namespace

namespace {

// Rejoins pieces of one shard that ended on the same server (fewer, longer kernel tasks).
void merge_adjacent(Schedule& s, const CostModel& cost) {
  const size_t n = s.set.tasks.size();
  // Tasks in (server, document, owner, position) order (a unique key): a counting sort by
  // server, then each server's tasks sorted.
  std::vector<uint32_t> start(s.servers() + 1, 0), order(n);
  for (uint32_t t = 0; t < n; ++t) ++start[s.server[t] + 1];
  for (uint32_t sv = 0; sv < s.servers(); ++sv) start[sv + 1] += start[sv];
  std::vector<uint32_t> next(start.begin(), start.end() - 1);
  for (uint32_t t = 0; t < n; ++t) order[next[s.server[t]]++] = t;
  auto key = [&](uint32_t t) {
    const Task& x = s.set.tasks[t];
    return std::make_tuple(x.doc, x.owner, x.pos0);
  };
  for (uint32_t sv = 0; sv < s.servers(); ++sv) {
    std::sort(order.begin() + start[sv], order.begin() + start[sv + 1],
              [&](uint32_t a, uint32_t b) { return key(a) < key(b); });
  }
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
    s.cost[t] = task_cost(s.set, s.set.tasks[t], cost);
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
