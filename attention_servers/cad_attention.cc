// CAD as a CoreAttention, and the dedicated server loop (see cad_attention.h).
#include "attention_servers/cad_attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <set>
#include <string>
#include <utility>

#include "common/error.h"

namespace cadtrain::attention_servers {
namespace {

constexpr uint64_t kControlMagic = 0x4c525443;  // "CTRL"
enum class Op : uint64_t { PREPARE = 1, FORWARD = 2, BACKWARD = 3, SHUTDOWN = 4, STATS = 5 };
constexpr size_t kControlWords = 5;  // magic, op, layer, group, serial
constexpr size_t kLayoutHeader = 8;  // is_trainer, seqs, parts, rows, q_heads, kv_heads, head_dim, scale bits

// The per-micro-batch state the model holds as its AttentionPlan.
struct CadPlanState final : kernels::AttentionPlan {
  CadStepPlan step;
  uint64_t serial = 0;
  std::vector<kernels::RowRange> parts;          // this rank's
  std::vector<std::vector<size_t>> fwd_needs;    // [part] groups that write this rank's O, LSE of the part
  std::vector<std::vector<size_t>> bwd_needs;    // [part] groups that write its dQ, dK, dV of the part
  std::set<std::pair<int, size_t>> fwd_done, bwd_done;  // (layer, group)
};

class CadHandle final : public kernels::AttentionHandle {
 public:
  CadHandle(const std::set<std::pair<int, size_t>>* done, std::vector<size_t> needs, int layer, size_t part,
            const char* what)
      : done_(done), needs_(std::move(needs)), layer_(layer), part_(part), what_(what) {}
  void wait() override {
    for (const size_t g : needs_) {
      CADTRAIN_CHECK(done_->count({layer_, g}) != 0,
                     "CAD attention {} of layer {}, part {}: waited on before group {} ran (the model must call every "
                     "part's {} before waiting on any)",
                     what_, layer_, part_, g, what_);
    }
  }

 private:
  const std::set<std::pair<int, size_t>>* done_;
  std::vector<size_t> needs_;
  int layer_;
  size_t part_;
  const char* what_;
};

CadPlanState& cad_state(kernels::AttentionPlan& plan, size_t part, const char* op) {
  auto* p = dynamic_cast<CadPlanState*>(&plan);
  CADTRAIN_CHECK(p != nullptr, "{}: the plan was prepared by another attention strategy", op);
  CADTRAIN_CHECK(part < p->parts.size(), "{}: part {} of a plan with {} parts", op, part, p->parts.size());
  return *p;
}

// All-gathers the trainers' layouts (servers contribute nothing) and plans the micro-batch.
// mine: this rank's layout and shape, or nullptr on a dedicated server.
CadStepPlan gather_and_plan(parallel::Communicator& world, const CadRuntimeOptions& options,
                            const kernels::AttentionShape* shape, const kernels::SequenceLayout* layout,
                            std::span<const kernels::RowRange> parts) {
  const int ranks = world.size(), me = world.rank();
  std::vector<uint64_t> head(kLayoutHeader, 0), heads(kLayoutHeader * static_cast<size_t>(ranks));
  std::vector<uint64_t> mine;
  if (layout != nullptr) {
    head = {1,
            static_cast<uint64_t>(layout->n_seqs),
            parts.size(),
            static_cast<uint64_t>(shape->n),
            static_cast<uint64_t>(shape->q_heads),
            static_cast<uint64_t>(shape->kv_heads),
            static_cast<uint64_t>(shape->head_dim),
            std::bit_cast<uint32_t>(shape->softmax_scale)};
    for (int64_t s = 0; s < layout->n_seqs; ++s) {
      mine.push_back(layout->doc_ids != nullptr
                         ? layout->doc_ids[s]
                         : (uint64_t{1} << 63) | static_cast<uint64_t>(me) << 32 | static_cast<uint64_t>(s));
      mine.push_back(static_cast<uint64_t>(layout->first_pos != nullptr ? layout->first_pos[s] : 0));
      mine.push_back(static_cast<uint64_t>(layout->cu_seqlens[s + 1] - layout->cu_seqlens[s]));
    }
    for (const kernels::RowRange& p : parts) {
      mine.push_back(static_cast<uint64_t>(p.begin));
      mine.push_back(static_cast<uint64_t>(p.end));
    }
  }
  world.all_gather(host_view(std::as_const(head)), host_view(heads));
  size_t width = 0;
  for (int r = 0; r < ranks; ++r) {
    const uint64_t* h = heads.data() + kLayoutHeader * static_cast<size_t>(r);
    const bool should_train = r < static_cast<int>(options.trainers);
    CADTRAIN_CHECK(h[0] == (should_train ? 1u : 0u),
                   "CAD prepare: world rank {} {} a trainer, but the CAD layout has {} trainer ranks", r,
                   h[0] != 0 ? "is" : "is not", options.trainers);
    width = std::max<size_t>(width, 3 * h[1] + 2 * h[2]);
  }
  mine.resize(width, 0);
  std::vector<uint64_t> all(width * static_cast<size_t>(ranks));
  world.all_gather(host_view(std::as_const(mine)), host_view(all));

  std::vector<RankLayout> layouts(options.trainers);
  const uint64_t* h0 = heads.data();
  for (uint32_t r = 0; r < options.trainers; ++r) {
    const uint64_t* h = heads.data() + kLayoutHeader * r;
    if (!std::equal(h + 4, h + 8, h0 + 4)) {
      fail("CAD prepare: trainer rank {} runs attention with {} q heads, {} kv heads, head size {}, scale bits {:#x}; "
           "rank 0 with {}, {}, {}, {:#x}",
           r, h[4], h[5], h[6], h[7], h0[4], h0[5], h0[6], h0[7]);
    }
    const uint64_t* rec = all.data() + width * r;
    RankLayout& rl = layouts[r];
    rl.rows = static_cast<int64_t>(h[3]);
    for (uint64_t s = 0; s < h[1]; ++s) {
      rl.seqs.push_back({rec[3 * s], static_cast<int64_t>(rec[3 * s + 1]), static_cast<int64_t>(rec[3 * s + 2])});
    }
    for (uint64_t p = 0; p < h[2]; ++p) {
      rl.parts.push_back({static_cast<int64_t>(rec[3 * h[1] + 2 * p]), static_cast<int64_t>(rec[3 * h[1] + 2 * p + 1])});
    }
  }
  CadStepPlan plan = plan_cad_step(std::move(layouts), options.plan);
  plan.dims = {static_cast<int64_t>(h0[4]), static_cast<int64_t>(h0[5]), static_cast<int64_t>(h0[6]),
               std::bit_cast<float>(static_cast<uint32_t>(h0[7]))};
  return plan;
}

// Trainer rank 0 tells dedicated servers what comes next (every trainer calls it, in step).
void control(parallel::Communicator& world, Op op, int layer, uint64_t group, uint64_t serial) {
  std::vector<uint64_t> words = {kControlMagic, static_cast<uint64_t>(op), static_cast<uint64_t>(layer), group, serial};
  world.broadcast(host_view(words), 0);
}

void check_options(const parallel::Communicator& world, const CadRuntimeOptions& o) {
  const SchedulerOptions& s = o.plan.scheduler;
  CADTRAIN_CHECK(o.trainers >= 1 && s.servers >= 1, "CAD: {} trainer ranks and {} servers: both must be >= 1",
                 o.trainers, s.servers);
  const uint64_t want = s.dedicated ? uint64_t{o.trainers} + s.servers : o.trainers;
  if (want != static_cast<uint64_t>(world.size()) || (!s.dedicated && s.servers != o.trainers)) {
    fail("CAD: mode {} with {} trainer ranks and {} servers needs a world of {} ranks, the {} communicator has {}",
         s.dedicated ? "DEDICATED" : "INPLACE", o.trainers, s.servers, want, world.name(), world.size());
  }
  CADTRAIN_CHECK(world.memory() == DeviceId::Kind::HOST, "CAD: the {} communicator is not for host memory",
                 world.name());
}

// CadStats as a fixed row of doubles, for an all-gather.
constexpr size_t kStatsFields = 14;
std::vector<double> pack_stats(const CadStats& s) {
  return {s.task_cost,
          static_cast<double>(s.tasks),
          s.busy_s,
          s.exchange_s,
          s.scheduler_s,
          static_cast<double>(s.bytes_sent),
          static_cast<double>(s.bytes_received),
          static_cast<double>(s.forward_bytes_sent),
          static_cast<double>(s.backward_bytes_sent),
          static_cast<double>(s.descriptor_bytes),
          static_cast<double>(s.kept_bytes),
          static_cast<double>(s.kept_bytes_peak),
          static_cast<double>(s.plan_hash >> 32),
          static_cast<double>(s.plan_hash & 0xffffffffu)};
}
CadStats unpack_stats(const double* d) {
  CadStats s;
  s.task_cost = d[0];
  s.tasks = static_cast<uint64_t>(d[1]);
  s.busy_s = d[2];
  s.exchange_s = d[3];
  s.scheduler_s = d[4];
  s.bytes_sent = static_cast<uint64_t>(d[5]);
  s.bytes_received = static_cast<uint64_t>(d[6]);
  s.forward_bytes_sent = static_cast<uint64_t>(d[7]);
  s.backward_bytes_sent = static_cast<uint64_t>(d[8]);
  s.descriptor_bytes = static_cast<uint64_t>(d[9]);
  s.kept_bytes = static_cast<uint64_t>(d[10]);
  s.kept_bytes_peak = static_cast<uint64_t>(d[11]);
  s.plan_hash = static_cast<uint64_t>(d[12]) << 32 | static_cast<uint64_t>(d[13]);
  return s;
}

// Every rank's statistics (all-gather over world), then this rank's counters restart.
std::vector<CadStats> gather_and_reset(parallel::Communicator& world, CadStats& mine) {
  const std::vector<double> row = pack_stats(mine);
  std::vector<double> all(kStatsFields * static_cast<size_t>(world.size()));
  world.all_gather(host_view(row), host_view(all));
  std::vector<CadStats> out;
  for (int r = 0; r < world.size(); ++r) out.push_back(unpack_stats(all.data() + kStatsFields * static_cast<size_t>(r)));
  const CadStats kept = mine;
  mine = CadStats{};
  mine.kept_bytes = mine.kept_bytes_peak = kept.kept_bytes;
  mine.plan_hash = kept.plan_hash;
  return out;
}

// The parts of this rank that rows [row0, row0 + rows) touch.
void add_parts(std::vector<std::vector<size_t>>& needs, const std::vector<kernels::RowRange>& parts, int64_t row0,
               int64_t rows, size_t group) {
  for (size_t p = 0; p < parts.size(); ++p) {
    if (parts[p].begin < row0 + rows && row0 < parts[p].end) {
      auto& v = needs[p];
      if (v.empty() || v.back() != group) v.push_back(group);
    }
  }
}

}  // namespace

CadAttention::CadAttention(parallel::Communicator& world, CadRuntimeOptions options)
    : world_(world), options_(std::move(options)), exchange_(world) {
  check_options(world_, options_);
  CADTRAIN_CHECK(world_.rank() < static_cast<int>(options_.trainers),
                 "CAD: world rank {} is a server (trainers are ranks 0..{}): it runs run_cad_server, not CadAttention",
                 world_.rank(), options_.trainers - 1);
}

CadAttention::~CadAttention() = default;

const CadStats& CadAttention::stats() const {
  return const_cast<CadExchange&>(exchange_).stats();
}

void CadAttention::reset_stats() { exchange_.stats() = CadStats{}; }

std::unique_ptr<kernels::AttentionPlan> CadAttention::prepare(const kernels::AttentionShape& shape,
                                                              const kernels::SequenceLayout& layout,
                                                              std::span<const kernels::RowRange> parts) {
  const char* op = "CAD prepare";
  const int64_t n = kernels::check_layout(layout, op);
  CADTRAIN_CHECK(n == shape.n, "{}: the sequences cover {} rows but n = {} (rank {})", op, n, shape.n, world_.rank());
  CADTRAIN_CHECK(!parts.empty() && parts.front().begin == 0 && parts.back().end == n,
                 "{}: the parts must cover the rank's {} rows (rank {})", op, n, world_.rank());
  ++serial_;
  const bool dedicated = options_.plan.scheduler.dedicated;
  if (dedicated) control(world_, Op::PREPARE, -1, 0, serial_);
  parallel::ScopedOpContext context(world_.watchdog(), parallel::OpContext{-1, -1, op});
  exchange_.drop_kept();
  auto state = std::make_unique<CadPlanState>();
  state->step = gather_and_plan(world_, options_, &shape, &layout, parts);
  state->serial = serial_;
  state->parts.assign(parts.begin(), parts.end());
  exchange_.stats().scheduler_s += state->step.scheduler_seconds;
  exchange_.stats().plan_hash = plan_hash(state->step);
  const auto me = static_cast<size_t>(world_.rank());
  state->fwd_needs.resize(parts.size());
  state->bwd_needs.resize(parts.size());
  for (size_t g = 0; g < state->step.groups.size(); ++g) {
    for (const auto& segs : state->step.groups[g].segments[me]) {
      for (const WireSegment& s : segs) {
        if (s.kind == static_cast<uint64_t>(Dispatch::QUERY)) add_parts(state->fwd_needs, state->parts, s.src_row0, s.rows, g);
        add_parts(state->bwd_needs, state->parts, s.src_row0, s.rows, g);
      }
    }
  }
  last_plan_ = &state->step;
  return state;
}

std::unique_ptr<kernels::AttentionHandle> CadAttention::forward(int layer, kernels::AttentionPlan& plan_base,
                                                                size_t part, const kernels::AttentionIO& io) {
  CadPlanState& st = cad_state(plan_base, part, "CAD forward");
  const kernels::AttentionDims& d = st.step.dims;
  const kernels::RowRange r = st.parts[part];
  std::fill(io.o + r.begin * d.q_heads * d.head_dim, io.o + r.end * d.q_heads * d.head_dim, 0.0f);
  std::fill(io.lse + r.begin * d.q_heads, io.lse + r.end * d.q_heads, -INFINITY);
  for (size_t g = 0; g < st.step.groups.size(); ++g) {
    if (st.step.groups[g].forward_part != part) continue;
    if (options_.plan.scheduler.dedicated) control(world_, Op::FORWARD, layer, g, st.serial);
    exchange_.forward({&st.step, g, layer, st.serial, options_.resend}, &io);
    st.fwd_done.insert({layer, g});
  }
  return std::make_unique<CadHandle>(&st.fwd_done, st.fwd_needs[part], layer, part, "forward");
}

std::unique_ptr<kernels::AttentionHandle> CadAttention::backward(int layer, kernels::AttentionPlan& plan_base,
                                                                 size_t part, kernels::AttentionHandle& /*forward*/,
                                                                 const kernels::AttentionIO& io,
                                                                 const kernels::AttentionGrads& grads) {
  CadPlanState& st = cad_state(plan_base, part, "CAD backward");
  const kernels::AttentionDims& d = st.step.dims;
  const kernels::RowRange r = st.parts[part];
  std::fill(grads.dq + r.begin * d.q_heads * d.head_dim, grads.dq + r.end * d.q_heads * d.head_dim, 0.0f);
  for (size_t g = st.step.groups.size(); g-- > 0;) {
    if (st.step.groups[g].backward_part != part) continue;
    if (options_.plan.scheduler.dedicated) control(world_, Op::BACKWARD, layer, g, st.serial);
    exchange_.backward({&st.step, g, layer, st.serial, options_.resend}, &io, &grads);
    st.bwd_done.insert({layer, g});
  }
  return std::make_unique<CadHandle>(&st.bwd_done, st.bwd_needs[part], layer, part, "backward");
}

CadStepMetrics CadAttention::end_step() {
  const auto& sched = options_.plan.scheduler;
  if (sched.dedicated) control(world_, Op::STATS, -1, 0, serial_);
  parallel::ScopedOpContext context(world_.watchdog(), parallel::OpContext{-1, -1, "CAD statistics"});
  std::vector<int> servers;
  for (uint32_t s = 0; s < sched.servers; ++s) servers.push_back(static_cast<int>(sched.dedicated ? options_.trainers + s : s));
  return summarize_cad_stats(gather_and_reset(world_, exchange_.stats()), std::move(servers));
}

void CadAttention::shutdown_servers() {
  if (!options_.plan.scheduler.dedicated || shut_down_) return;
  control(world_, Op::SHUTDOWN, -1, 0, serial_);
  shut_down_ = true;
}

CadStats run_cad_server(parallel::Communicator& world, const CadRuntimeOptions& options) {
  check_options(world, options);
  CADTRAIN_CHECK(options.plan.scheduler.dedicated, "CAD server loop: only DEDICATED mode has server-only ranks");
  CADTRAIN_CHECK(world.rank() >= static_cast<int>(options.trainers), "CAD server loop: world rank {} is a trainer",
                 world.rank());
  CadExchange exchange(world);
  std::unique_ptr<CadStepPlan> plan;
  uint64_t serial = 0;
  for (;;) {
    std::vector<uint64_t> words(kControlWords, 0);
    {
      parallel::ScopedOpContext context(world.watchdog(), parallel::OpContext{-1, -1, "CAD server waiting for trainers"});
      world.broadcast(host_view(words), 0);
    }
    if (words[0] != kControlMagic) fail("CAD server rank {}: control message from rank 0 has bad magic {:#x}", world.rank(), words[0]);
    const auto op = static_cast<Op>(words[1]);
    const int layer = static_cast<int>(static_cast<int64_t>(words[2]));
    const uint64_t group = words[3];
    if (op == Op::SHUTDOWN) return exchange.stats();
    if (op == Op::STATS) {
      parallel::ScopedOpContext context(world.watchdog(), parallel::OpContext{-1, -1, "CAD statistics"});
      gather_and_reset(world, exchange.stats());
      continue;
    }
    if (op == Op::PREPARE) {
      serial = words[4];
      exchange.drop_kept();
      plan = std::make_unique<CadStepPlan>(gather_and_plan(world, options, nullptr, nullptr, {}));
      exchange.stats().scheduler_s += plan->scheduler_seconds;
      exchange.stats().plan_hash = plan_hash(*plan);
      continue;
    }
    CADTRAIN_CHECK(plan != nullptr && words[4] == serial && group < plan->groups.size(),
                   "CAD server rank {}: call {} for micro-batch {} group {}, but it holds micro-batch {} with {} groups",
                   world.rank(), words[1], words[4], group, serial, plan ? plan->groups.size() : 0);
    const CadCall call{plan.get(), group, layer, serial, options.resend};
    if (op == Op::FORWARD) {
      exchange.forward(call, nullptr);
    } else if (op == Op::BACKWARD) {
      exchange.backward(call, nullptr, nullptr);
    } else {
      fail("CAD server rank {}: unknown control operation {} from rank 0", world.rank(), words[1]);
    }
  }
}

}  // namespace cadtrain::attention_servers
