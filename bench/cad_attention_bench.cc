// Core attention of a skewed batch on P ranks: LOCAL (every rank attends over its own packed
// documents: data parallelism's straggler) beside CAD in place (attention_servers/cad_attention.h:
// the scheduler balances the tasks over the same ranks), measured in the same run, with the
// planner's predicted imbalance beside the measured one. Rank 0 holds one document of --tokens
// tokens, every other rank the same number of tokens in 128-token documents. A step is forward
// then backward of --layers layers (the model's order, one nano-batch). Busy = time in attention
// kernels; step = wall time between barriers (max over ranks); best of --repeats steps. CAD runs
// with either backward mode; 'server state kept' is the largest KEEP_ON_SERVER state of a server.
//
//   mpirun --oversubscribe -np 2 build/bench/cad_attention_bench [--tokens 4096] [--layers 2]
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "attention_servers/cad_attention.h"
#include "bench/bench_util.h"
#include "common/rng.h"
#include "kernels/core_attention.h"
#include "parallel/mpi_runtime.h"

using namespace cadtrain;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

struct Figures {
  std::vector<double> busy;  // per rank, seconds
  std::vector<double> idle;  // per rank: CAD exchange time
  double step = 0;           // max over ranks
  double bytes = 0;          // payload over the wire, all ranks
  double kept = 0;           // largest KEEP_ON_SERVER state of a server, bytes
};

double imbalance(const std::vector<double>& x) {
  double sum = 0, mx = 0;
  for (const double v : x) {
    sum += v;
    mx = std::max(mx, v);
  }
  return sum > 0 ? mx / (sum / static_cast<double>(x.size())) : 1;
}

std::string ms_list(const std::vector<double>& x) {
  std::string s;
  for (const double v : x) s += (s.empty() ? "" : " / ") + fmt::format("{:.0f}", 1e3 * v);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  parallel::MpiRuntime mpi(&argc, &argv);
  CLI::App app{"CAD in place vs LOCAL core attention on a skewed batch"};
  int64_t tokens = 4096;
  int layers = 2, repeats = 3, heads = 4, dim = 64;
  int64_t shard = 512;
  app.add_option("--tokens", tokens, "tokens per rank");
  app.add_option("--layers", layers, "attention layers per step");
  app.add_option("--repeats", repeats, "steps measured (best is reported)");
  app.add_option("--heads", heads, "query = kv heads");
  app.add_option("--shard", shard, "attention.cad.shard_tokens");
  CLI11_PARSE(app, argc, argv);
  try {
    auto world = mpi.world(600);
    const int P = world->size(), me = world->rank();
    // Rank 0: one long document; others: 128-token documents.
    std::vector<int32_t> cu = {0};
    if (me == 0) {
      cu.push_back(static_cast<int32_t>(tokens));
    } else {
      for (int64_t t = 128; t <= tokens; t += 128) cu.push_back(static_cast<int32_t>(t));
    }
    const int64_t n = cu.back(), n_seqs = static_cast<int64_t>(cu.size()) - 1;
    std::vector<uint64_t> docs(static_cast<size_t>(n_seqs));
    for (int64_t s = 0; s < n_seqs; ++s) docs[static_cast<size_t>(s)] = static_cast<uint64_t>(me) << 32 | static_cast<uint64_t>(s);
    const kernels::SequenceLayout layout{cu.data(), n_seqs, nullptr, docs.data()};
    const kernels::AttentionShape shape{n, heads, heads, dim, static_cast<float>(1.0 / std::sqrt(double(dim)))};
    const auto width = static_cast<size_t>(n * heads * dim);
    const std::vector<float> q = randn(width, 1 + me), k = randn(width, 11 + me), v = randn(width, 21 + me),
                             dout = randn(width, 31 + me);
    std::vector<std::vector<float>> o(static_cast<size_t>(layers), std::vector<float>(width)),
        lse(static_cast<size_t>(layers), std::vector<float>(static_cast<size_t>(n * heads)));
    std::vector<float> dq(width), dk(width), dv(width);
    const kernels::RowRange all{0, n};

    attention_servers::CadRuntimeOptions opts;
    opts.trainers = static_cast<uint32_t>(P);
    opts.plan.shard_tokens = shard;
    opts.plan.scheduler.servers = static_cast<uint32_t>(P);
    opts.plan.scheduler.split_rows = std::min<int64_t>(128, shard);
    opts.plan.scheduler.bytes = attention_servers::row_bytes(heads, heads, dim, 4);
    attention_servers::CadAttention cad(*world, opts);
    attention_servers::CadRuntimeOptions resend_opts = opts;
    resend_opts.resend = true;
    attention_servers::CadAttention cad_resend(*world, resend_opts);
    const auto local = kernels::make_local_task_attention();

    // One step of `attention`: forward every layer, backward every layer; returns kernel seconds
    // for LOCAL (the whole call is compute) and leaves CAD's in its statistics.
    const auto step = [&](kernels::CoreAttention& attention) {
      const auto t0 = Clock::now();
      const auto plan = attention.prepare(shape, layout, std::span(&all, 1));
      std::vector<std::unique_ptr<kernels::AttentionHandle>> fwd;
      for (int l = 0; l < layers; ++l) {
        fwd.push_back(attention.forward(l, *plan, 0, {q.data(), k.data(), v.data(), o[size_t(l)].data(), lse[size_t(l)].data()}));
        fwd.back()->wait();
      }
      for (int l = layers; l-- > 0;) {
        std::fill(dk.begin(), dk.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        attention
            .backward(l, *plan, 0, *fwd[size_t(l)], {q.data(), k.data(), v.data(), o[size_t(l)].data(), lse[size_t(l)].data()},
                      {dout.data(), dq.data(), dk.data(), dv.data()})
            ->wait();
      }
      return seconds_since(t0);
    };
    const auto measure = [&](kernels::CoreAttention& attention, attention_servers::CadAttention* cadp) {
      const bool is_cad = cadp != nullptr;
      Figures best;
      best.step = 1e300;
      for (int r = 0; r < repeats; ++r) {
        world->barrier();
        if (is_cad) cadp->reset_stats();
        const auto t0 = Clock::now();
        const double busy_local = step(attention);
        world->barrier();
        std::vector<double> wall = {seconds_since(t0)};
        world->all_reduce(host_view(wall), parallel::ReduceOp::MAX);
        std::vector<double> busy(static_cast<size_t>(P)), mine = {is_cad ? cadp->stats().busy_s : busy_local};
        world->all_gather(host_view(std::as_const(mine)), host_view(busy));
        std::vector<double> idle(static_cast<size_t>(P)), my_idle = {is_cad ? cadp->stats().exchange_s : 0.0};
        world->all_gather(host_view(std::as_const(my_idle)), host_view(idle));
        std::vector<double> bytes = {is_cad ? static_cast<double>(cadp->stats().bytes_sent) : 0.0};
        world->all_reduce(host_view(bytes), parallel::ReduceOp::SUM);
        std::vector<double> kept = {is_cad ? static_cast<double>(cadp->stats().kept_bytes_peak) : 0.0};
        world->all_reduce(host_view(kept), parallel::ReduceOp::MAX);
        if (wall[0] < best.step) best = {busy, idle, wall[0], bytes[0], kept[0]};
      }
      return best;
    };
    const Figures loc = measure(*local, nullptr);
    const Figures cadf = measure(cad, &cad);
    const Figures resf = measure(cad_resend, &cad_resend);
    // The planner's prediction: LOCAL's pair imbalance, CAD's scheduled load imbalance.
    std::vector<double> pairs(static_cast<size_t>(P)), my_pairs = {static_cast<double>(kernels::layout_pairs(layout))};
    world->all_gather(host_view(std::as_const(my_pairs)), host_view(pairs));
    double cad_pred = 1;
    for (const auto& g : cad.last_plan()->groups) cad_pred = std::max(cad_pred, g.plan.imbalance());
    if (me == 0) {
      fmt::print("core attention, {} ranks x {} tokens (rank 0: one document; others: 128-token documents), "
                 "{} heads x {}, {} layers fwd+bwd, shard {}, OMP threads {}\n\n",
                 P, tokens, heads, dim, layers, shard, omp_get_max_threads());
      bench::Table t({"strategy", "busy per rank (ms)", "exchange per rank (ms)", "busy imbalance (measured)",
                      "imbalance (planner)", "step (ms)", "step vs LOCAL", "bytes/step", "server state kept"});
      t.add({"LOCAL packing", ms_list(loc.busy), "-", fmt::format("{:.2f}", imbalance(loc.busy)),
             fmt::format("{:.2f}", imbalance(pairs)), fmt::format("{:.0f}", 1e3 * loc.step), "1.00", "0", "-"});
      const auto cad_row = [&](const char* name, const Figures& f) {
        t.add({name, ms_list(f.busy), ms_list(f.idle), fmt::format("{:.2f}", imbalance(f.busy)),
               fmt::format("{:.2f}", cad_pred), fmt::format("{:.0f}", 1e3 * f.step),
               fmt::format("{:.2f}", f.step / loc.step), fmt::format("{:.2f} MB", f.bytes / 1e6),
               fmt::format("{:.2f} MB", f.kept / 1e6)});
      };
      cad_row("CAD in place, KEEP_ON_SERVER", cadf);
      cad_row("CAD in place, RESEND", resf);
      t.print();
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", mpi.identity().describe(), e.what());
    mpi.abort_job(1);
  }
}
