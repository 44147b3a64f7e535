// Per-strategy simulation of one batch (see simulate.h for the model and its assumptions).
#include "attention_servers/simulate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "attention_servers/plan.h"
#include "attention_servers/workload.h"
#include "common/error.h"
#include "configs/config.h"

namespace cadtrain::attention_servers {

namespace {

double pairs_of(int64_t a, int64_t b) {  // causal pairs of rows at prefix offsets [a, b)
  const double x = static_cast<double>(a), y = static_cast<double>(b);
  return (y * (y + 1) - x * (x + 1)) / 2;
}

double params_of(const config::ModelConfig& m) {
  const double d = m.d_model(), hq = m.n_heads(), hk = config::kv_heads(m), D = config::head_dim(m);
  const double ffn = config::ffn_hidden(m), L = m.n_layers(), V = m.vocab_size();
  const double layer = d * (hq + 2 * hk) * D + hq * D * d + 3 * d * ffn;
  return L * layer + V * d * (m.tie_embeddings() ? 1 : 2);
}

// Fills the summary figures of a result from its ranks: step = slowest busy rank (or, with
// overlap, max of the roles) + the largest exposed communication.
void summarize(StrategyResult& r, double compute_s) {
  double sum_busy = 0, max_exposed = 0;
  for (const auto& k : r.ranks) {
    sum_busy += k.busy_s();
    max_exposed = std::max(max_exposed, k.exposed_comm_s);
    r.bytes_moved += k.bytes_sent;
  }
  r.step_time_s = compute_s + max_exposed;
  r.exposed_comm_fraction = r.step_time_s > 0 ? max_exposed / r.step_time_s : 0;
  r.idle_fraction = compute_s > 0 ? 1 - sum_busy / (compute_s * static_cast<double>(r.ranks.size())) : 0;
  // Imbalance within each role (trainers, servers): the worse of them.
  r.compute_imbalance = 1;
  for (const std::string role : {"trainer", "server", "trainer+server"}) {
    double mx = 0, sum = 0;
    size_t n = 0;
    for (const auto& k : r.ranks) {
      if (k.role != role) continue;
      mx = std::max(mx, k.busy_s());
      sum += k.busy_s();
      ++n;
    }
    if (n > 0 && sum > 0) r.compute_imbalance = std::max(r.compute_imbalance, mx / (sum / static_cast<double>(n)));
  }
}

double max_busy(const StrategyResult& r) {
  double mx = 0;
  for (const auto& k : r.ranks) mx = std::max(mx, k.busy_s());
  return mx;
}

class Simulator {
 public:
  Simulator(const config::RunConfig& cfg, const Machine& m, const CostModel& cost) : cfg_(cfg), m_(m), cost_(cost) {}

  double linear_s(double tokens) const { return tokens * m_.linear_flops_per_token / m_.linear_flops; }
  double attention_s(double pairs) const { return pairs * m_.attention_flops_per_pair / m_.attention_flops; }
  double activations(double tokens) const { return tokens * m_.activation_bytes_per_token + m_.state_bytes_per_rank; }
  uint32_t node(uint32_t world_rank) const { return world_rank / m_.ranks_per_node; }

  StrategyResult packing(const std::vector<int64_t>& docs) const {
    StrategyResult r;
    r.strategy = "packing_dp";
    auto doc_cost = [](int64_t len, const void* self) {
      const auto* sim = static_cast<const Simulator*>(self);
      return sim->linear_s(static_cast<double>(len)) + sim->attention_s(pairs_of(0, len));
    };
    const BatchLayout b = pack_by_cost(docs, m_.ranks, doc_cost, this);
    for (const auto& seqs : b.ranks) {
      RankFigures k;
      double pairs = 0;
      for (const Sequence& s : seqs) {
        k.tokens += static_cast<double>(s.length);
        pairs += pairs_of(0, s.length);
      }
      k.attention_s = attention_s(pairs);
      k.linear_s = linear_s(k.tokens);
      k.memory_bytes = activations(k.tokens);
      r.ranks.push_back(k);
    }
    summarize(r, max_busy(r));
    r.note = "variable-length chunks: whole documents placed largest compute first on the least loaded rank";
    return r;
  }

  // Per-document context parallelism over groups of cp ranks, zigzag chunks (2 cp per document).
  // kind: "percp_allgather", "ring" or "tokenring".
  StrategyResult context_parallel(const std::vector<int64_t>& docs, const std::string& kind) const {
    StrategyResult r;
    r.strategy = kind;
    const uint32_t cp = m_.cp_degree, groups = m_.ranks / cp;
    const BatchLayout b = pack_in_order(docs, groups, m_.tokens_per_rank * cp);
    const bool spans_nodes = cp > m_.ranks_per_node;
    const double bw = spans_nodes ? m_.bw_inter : m_.bw_intra, lat = spans_nodes ? m_.lat_inter : m_.lat_intra;
    const double L = static_cast<double>(m_.layers);
    for (uint32_t g = 0; g < groups; ++g) {
      std::vector<double> tokens(cp, 0), pairs(cp, 0);
      double group_tokens = 0;
      for (const Sequence& s : b.ranks[g]) {
        group_tokens += static_cast<double>(s.length);
        const int64_t chunks = 2 * cp;
        for (uint32_t q = 0; q < cp; ++q) {
          for (int64_t c : {static_cast<int64_t>(q), chunks - 1 - q}) {
            const int64_t lo = s.length * c / chunks, hi = s.length * (c + 1) / chunks;
            tokens[q] += static_cast<double>(hi - lo);
            pairs[q] += pairs_of(lo, hi);
          }
        }
      }
      for (uint32_t q = 0; q < cp; ++q) {
        RankFigures k;
        k.tokens = tokens[q];
        k.attention_s = attention_s(pairs[q]);
        k.linear_s = linear_s(k.tokens);
        k.memory_bytes = activations(k.tokens);
        const double others = group_tokens - tokens[q];
        if (cp > 1 && kind == "percp_allgather") {
          // All-gather K/V before attention, reduce-scatter dK/dV after it: each rank receives (and
          // sends) the K/V rows of the rest of the group per layer, twice.
          const double bytes = 2 * others * static_cast<double>(m_.row.kv) * L;
          k.bytes_sent = k.bytes_received = bytes;
          k.comm_s = bytes / bw + 2 * L * (cp - 1) * lat;
          k.exposed_comm_s = k.comm_s;
          k.memory_bytes += group_tokens * static_cast<double>(m_.row.kv);
        } else if (cp > 1) {
          // P-1 steps forward and backward; each step's transfer overlaps that step's compute.
          const double own = tokens[q];
          double fwd_step = 0, bwd_step = 0, sent = 0;
          if (kind == "ring") {  // K/V rotate; backward: K/V and dK/dV
            fwd_step = own * static_cast<double>(m_.row.kv);
            bwd_step = 2 * fwd_step;
            sent = fwd_step + bwd_step;
          } else {  // TokenRing: Q one way while O+LSE return the other way (both link directions)
            fwd_step = own * static_cast<double>(m_.row.q + m_.row.lse);
            bwd_step = 2 * own * static_cast<double>(m_.row.q);
            sent = own * static_cast<double>(2 * m_.row.q + m_.row.lse) + 3 * own * static_cast<double>(m_.row.q);
          }
          const double steps = cp - 1;
          const double attn_fwd_step = k.attention_s / 3.5 / L / cp, attn_bwd_step = attn_fwd_step * 2.5;
          const double cf = fwd_step / bw + lat, cb = bwd_step / bw + lat;
          k.comm_s = L * steps * (cf + cb);
          k.exposed_comm_s = L * steps * (std::max(0.0, cf - attn_fwd_step) + std::max(0.0, cb - attn_bwd_step));
          k.bytes_sent = k.bytes_received = L * steps * sent;
          k.memory_bytes += 2 * own * static_cast<double>(m_.row.kv);
        }
        r.ranks.push_back(k);
      }
    }
    summarize(r, max_busy(r));
    r.note = fmt::format("context-parallel groups of {} ranks ({}), zigzag chunks", cp,
                         spans_nodes ? "across nodes" : "inside a node");
    return r;
  }

  // CAD with `servers` servers: INPLACE when servers == 0 (every rank serves), else DEDICATED.
  StrategyResult cad(const std::vector<int64_t>& docs, uint32_t pool) const {
    StrategyResult r;
    const bool dedicated = pool > 0;
    r.strategy = dedicated ? "cad_dedicated" : "cad_inplace";
    const uint32_t trainers = m_.ranks - pool;
    const uint32_t servers = dedicated ? pool : m_.ranks;
    r.servers = servers;
    const int64_t total = m_.tokens_per_rank * m_.ranks;
    const int64_t per_trainer = (total + trainers - 1) / trainers;
    const BatchLayout b = pack_in_order(docs, trainers, per_trainer);
    const auto& cad = cfg_.attention().cad();
    SchedulerOptions o;
    o.servers = servers;
    o.dedicated = dedicated;
    o.tolerance = cad.tolerance();
    o.split_rows = cad.split_rows() != 0 ? cad.split_rows() : std::min<int64_t>(128, cad.shard_tokens());
    o.bytes = m_.row;
    google::protobuf::Arena arena;  // the plan's many small messages, freed at once
    const AttentionPlan& plan =
        *build_plan(schedule_tasks(form_tasks(b, cad.shard_tokens()), cost_, o), o.bytes, cad.shard_tokens(), &arena);
    r.balanced = plan.balanced();
    const uint32_t world = trainers + (dedicated ? pool : 0);
    r.ranks.assign(world, RankFigures{});
    for (uint32_t t = 0; t < trainers; ++t) {
      RankFigures& k = r.ranks[t];
      k.role = dedicated ? "trainer" : "trainer+server";
      for (const Sequence& s : b.ranks[t]) k.tokens += static_cast<double>(s.length);
      k.linear_s = linear_s(k.tokens);
      k.memory_bytes = activations(k.tokens);
    }
    for (uint32_t s = trainers; s < world; ++s) {
      r.ranks[s].role = "server";
      r.ranks[s].memory_bytes = m_.state_bytes_per_rank;
    }
    // Bytes per link and direction of one layer, forward and backward (KEEP_ON_SERVER or RESEND).
    const bool keep = cad.backward() == config::KEEP_ON_SERVER;
    struct Dir { double intra = 0, inter = 0; };
    std::vector<Dir> fs(world), fr(world), bs(world), br(world);
    auto add = [&](std::vector<Dir>& snd, std::vector<Dir>& rcv, uint32_t from, uint32_t to, double bytes) {
      if (from == to || bytes <= 0) return;
      const bool inter = node(from) != node(to);
      (inter ? snd[from].inter : snd[from].intra) += bytes;
      (inter ? rcv[to].inter : rcv[to].intra) += bytes;
    };
    const double q = static_cast<double>(m_.row.q), kv = static_cast<double>(m_.row.kv),
                 lse = static_cast<double>(m_.row.lse);
    for (const ServerPlan& sp : plan.server_plans()) {
      const uint32_t srv = sp.rank();
      RankFigures& k = r.ranks[srv];
      k.attention_s += attention_s(sp.load());
      const double buffers = static_cast<double>(sp.q_rows()) * (2 * q + lse) + static_cast<double>(sp.kv_rows()) * kv;
      k.memory_bytes += keep ? buffers * static_cast<double>(m_.layers) : buffers;
      for (const Dispatch& d : sp.inputs()) {
        const double rows = static_cast<double>(d.rows());
        if (d.kind() == Dispatch::QUERY) {
          add(fs, fr, d.src_rank(), srv, rows * q);          // Q
          add(fs, fr, srv, d.src_rank(), rows * (q + lse));  // O, LSE
          add(bs, br, d.src_rank(), srv, rows * q);          // dO
          add(bs, br, srv, d.src_rank(), rows * q);          // dQ
          if (!keep) add(bs, br, d.src_rank(), srv, rows * (2 * q + lse));  // Q, O, LSE again
        } else {
          add(fs, fr, d.src_rank(), srv, rows * kv);  // K, V
          add(bs, br, srv, d.src_rank(), rows * kv);  // dK, dV
          if (!keep) add(bs, br, d.src_rank(), srv, rows * kv);
        }
      }
    }
    r.bytes_forward = static_cast<double>(plan.bytes().forward()) * static_cast<double>(m_.layers);
    r.bytes_published_count =
        static_cast<double>(plan.bytes().charging_local_kv()) * static_cast<double>(m_.layers);
    auto seconds = [&](const Dir& d) { return d.intra / m_.bw_intra + d.inter / m_.bw_inter; };
    const double L = static_cast<double>(m_.layers);
    const bool ping_pong = cad.ping_pong();
    for (uint32_t w = 0; w < world; ++w) {
      RankFigures& k = r.ranks[w];
      const double tf = std::max(seconds(fs[w]), seconds(fr[w])), tb = std::max(seconds(bs[w]), seconds(br[w]));
      const bool talks = tf + tb > 0;
      const double lat = talks ? 2 * (m_.ranks_per_node < world ? m_.lat_inter : m_.lat_intra) : 0;
      k.comm_s = L * (tf + tb + 2 * lat);
      k.bytes_sent = L * (fs[w].intra + fs[w].inter + bs[w].intra + bs[w].inter);
      k.bytes_received = L * (fr[w].intra + fr[w].inter + br[w].intra + br[w].inter);
      if (ping_pong) {
        // The other nano-batch's compute of this layer (its linear layers and, on a rank that
        // serves, its core attention) runs while this one's transfers are in flight.
        const double hide_f = (k.linear_s / 3 + k.attention_s / 3.5) / L;
        const double hide_b = (2 * k.linear_s / 3 + 2.5 * k.attention_s / 3.5) / L;
        k.exposed_comm_s = L * (std::max(0.0, tf + lat - hide_f) + std::max(0.0, tb + lat - hide_b));
      } else {
        k.exposed_comm_s = k.comm_s;
      }
    }
    double compute = 0;
    if (dedicated && ping_pong) {  // trainers' linear work overlaps servers' attention
      compute = max_busy(r);
    } else if (dedicated) {  // trainers wait for the servers every layer
      double lin = 0, attn = 0;
      for (const auto& k : r.ranks) {
        lin = std::max(lin, k.linear_s);
        attn = std::max(attn, k.attention_s);
      }
      compute = lin + attn;
    } else {
      compute = max_busy(r);
    }
    summarize(r, compute);
    r.note = fmt::format("{} servers, scheduler {} (imbalance {:.3f}{}{})", servers,
                         plan.balanced() ? "balanced" : "NOT balanced", plan.imbalance(),
                         plan.balanced() ? "" : ": ", plan.reason());
    return r;
  }

 private:
  const config::RunConfig& cfg_;
  const Machine& m_;
  const CostModel& cost_;
};

}  // namespace

Machine describe_machine(const config::RunConfig& cfg) {
  const auto& c = cfg.cluster();
  const auto& p = cfg.planner();
  const auto& model = cfg.model();
  Machine m;
  m.gpus = c.gpus();
  m.tp = p.tensor_parallel();
  if (m.gpus % m.tp != 0) fail("cluster.gpus ({}) is not a multiple of planner.tensor_parallel ({})", m.gpus, m.tp);
  if (c.gpus_per_node() % m.tp != 0 && m.tp % c.gpus_per_node() != 0) {
    fail("planner.tensor_parallel ({}) and cluster.gpus_per_node ({}) must divide one another", m.tp, c.gpus_per_node());
  }
  m.ranks = m.gpus / m.tp;
  m.ranks_per_node = std::max<uint32_t>(1, c.gpus_per_node() / m.tp);
  const double tp = m.tp;
  m.linear_flops = tp * c.dense_flops() * c.linear_efficiency();
  m.attention_flops = tp * (c.attention_flops() > 0 ? c.attention_flops() : c.dense_flops() * c.linear_efficiency());
  m.hbm = tp * c.hbm_bytes();
  m.bw_intra = tp * c.intra_node_bandwidth();
  m.bw_inter = tp * c.inter_node_bandwidth();
  m.lat_intra = c.intra_node_latency();
  m.lat_inter = c.inter_node_latency();
  const double d = model.d_model(), hq = model.n_heads(), hk = config::kv_heads(model), D = config::head_dim(model);
  const double ffn = config::ffn_hidden(model), L = model.n_layers();
  const double params = params_of(model);
  const double embed = model.vocab_size() * d;
  m.linear_flops_per_token = 6 * (params - embed);  // the embedding lookup does no matmul
  m.attention_flops_per_pair = 4 * D * hq * 3.5 * L;
  const double db = c.dtype_bytes();
  m.activation_bytes_per_token =
      model.recompute_activations() ? L * (d * db + hq * D * db + hq * 4)
                                    : L * ((5 * d + (2 * hq + 2 * hk) * D + 3 * ffn) * db + hq * 4);
  m.state_bytes_per_rank = 16 * params / m.gpus * tp;
  m.layers = model.n_layers();
  m.row = row_bytes(static_cast<int64_t>(hq), static_cast<int64_t>(hk), static_cast<int64_t>(D),
                    static_cast<int64_t>(db));
  m.tokens_per_rank = cfg.data().tokens_per_micro_batch();
  m.cp_degree = p.cp_degree() == 0 ? m.ranks : p.cp_degree();
  if (m.ranks % m.cp_degree != 0) fail("planner.cp_degree ({}) does not divide the {} ranks", m.cp_degree, m.ranks);
  const double need = static_cast<double>(m.tokens_per_rank) * m.activation_bytes_per_token + m.state_bytes_per_rank;
  if (need > m.hbm) {
    fail("cluster.hbm_bytes ({:.3g} per GPU) cannot hold the model and a micro-batch: model states {:.1f} GB per GPU "
         "(16 bytes x {:.3g} parameters over {} GPUs) + activations {:.1f} GB per GPU for data.tokens_per_micro_batch "
         "{} tokens on {} GPUs (planner.tensor_parallel){}; use more GPUs, fewer tokens or model.recompute_activations",
         c.hbm_bytes(), m.state_bytes_per_rank / tp / 1e9, params, m.gpus,
         static_cast<double>(m.tokens_per_rank) * m.activation_bytes_per_token / tp / 1e9, m.tokens_per_rank, m.tp,
         model.recompute_activations() ? " with recomputation" : "");
  }
  return m;
}

std::vector<StrategyResult> simulate_batch(const config::RunConfig& cfg, const Machine& m, const CostModel& cost,
                                           const std::vector<int64_t>& docs, const std::vector<uint32_t>& pool_sizes) {
  Simulator sim(cfg, m, cost);
  std::vector<StrategyResult> out;
  out.push_back(sim.packing(docs));
  out.push_back(sim.context_parallel(docs, "percp_allgather"));
  out.push_back(sim.context_parallel(docs, "ring"));
  out.push_back(sim.context_parallel(docs, "tokenring"));
  out.push_back(sim.cad(docs, 0));
  std::vector<StrategyResult> pools;
  for (uint32_t s : pool_sizes) {
    if (s == 0 || s >= m.ranks) continue;
    pools.push_back(sim.cad(docs, s));
  }
  auto fits = [&](const StrategyResult& r) {
    for (const auto& k : r.ranks) {
      if (k.memory_bytes > m.hbm) return false;
    }
    return true;
  };
  if (!pools.empty()) {
    // The fastest pool that fits in memory (the fastest of all when none fits).
    size_t best = 0;
    for (size_t i = 1; i < pools.size(); ++i) {
      const bool better_fit = fits(pools[i]) && !fits(pools[best]);
      const bool same_fit = fits(pools[i]) == fits(pools[best]);
      if (better_fit || (same_fit && pools[i].step_time_s < pools[best].step_time_s)) best = i;
    }
    StrategyResult r = pools[best];
    std::string tried;
    for (const auto& p : pools) tried += fmt::format(" {}:{:.3f}s{}", p.servers, p.step_time_s, fits(p) ? "" : "(OOM)");
    r.note += "; pool sizes tried (servers:step)" + tried;
    out.push_back(std::move(r));
  }
  for (auto& r : out) r.fits_memory = fits(r);
  const double base = out.front().step_time_s;
  for (auto& r : out) r.speedup_vs_packing = r.step_time_s > 0 ? base / r.step_time_s : 1;
  return out;
}

}  // namespace cadtrain::attention_servers
