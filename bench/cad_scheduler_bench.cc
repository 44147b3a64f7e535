// How long the CAD scheduler takes, as a function of servers (8 .. 4096) and of tasks, on one
// batch of documents; beside it, in the same run, the time of task formation (a linear pass over
// the batch) and the GPU step the schedule serves (Llama-8B shape on H200s at 50% of dense peak,
// from the batch's FLOPs), so the scheduler's share of a step is visible. Ends with the fitted
// growth law time ~ servers^a and time ~ tasks^b (least squares in log-log).
//   build/bench/cad_scheduler_bench [--tokens 524288] [--doclens ../shared/data/doclens_wlbllm.json]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <vector>

#include "attention_servers/plan.h"
#include "attention_servers/workload.h"
#include "bench/bench_util.h"
#include "common/rng.h"

using namespace cadtrain;
using namespace cadtrain::attention_servers;

namespace {

double slope(const std::vector<double>& x, const std::vector<double>& y) {
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    mx += std::log(x[i]) / static_cast<double>(x.size());
    my += std::log(y[i]) / static_cast<double>(x.size());
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (std::log(x[i]) - mx) * (std::log(y[i]) - my);
    den += (std::log(x[i]) - mx) * (std::log(x[i]) - mx);
  }
  return num / den;
}

// Llama-8B step on `gpus` H200s for this batch: 6 x 7.5e9 FLOPs per token plus attention pairs,
// at 0.5 x 989 TFLOP/s.
double gpu_step_s(const std::vector<int64_t>& docs, uint32_t gpus) {
  double tokens = 0, pairs = 0;
  for (int64_t d : docs) {
    tokens += static_cast<double>(d);
    pairs += static_cast<double>(d) * static_cast<double>(d + 1) / 2;
  }
  const double flops = tokens * 6 * 7.5e9 + pairs * 4 * 128 * 32 * 3.5 * 32;
  return flops / (gpus * 0.5 * 989e12);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CAD scheduler time vs servers and tasks"};
  int64_t tokens = 524288;
  std::string doclens;
  int repeats = 3;
  app.add_option("--tokens", tokens, "Tokens in the batch");
  app.add_option("--doclens", doclens, "JSON array of document lengths (default: the PRETRAIN preset, mean 4K)");
  app.add_option("--repeats", repeats, "Best of this many runs");
  uint32_t only_servers = 0;
  int64_t only_shard = 0;
  app.add_option("--servers", only_servers, "Time only this many servers (with --shard; for profilers)");
  app.add_option("--shard", only_shard, "Shard tokens of the --servers point (default tokens / servers / 4)");
  CLI11_PARSE(app, argc, argv);

  config::SynthConfig synth;
  synth.set_mean_doc_tokens(4096);
  config::PlannerConfig planner;
  planner.set_max_doc_tokens(static_cast<uint64_t>(tokens));
  std::vector<int64_t> sample;
  if (!doclens.empty()) sample = load_doclens(doclens);
  const LengthSampler sampler(std::move(sample), synth, planner);
  Rng rng(1);
  const std::vector<int64_t> docs = draw_documents(sampler, tokens, rng);
  fmt::print("batch: {} tokens, {} documents ({})\n\n", tokens, docs.size(), doclens.empty() ? "PRETRAIN preset" : doclens);

  auto run = [&](uint32_t servers, int64_t shard, bench::Table& table, std::vector<double>* xs, std::vector<double>* ys,
                 std::vector<double>* ys_sched, bool by_tasks) {
    const BatchLayout layout = pack_in_order(docs, servers, tokens / servers);
    SchedulerOptions o;
    o.servers = servers;
    o.tolerance = 0.05;
    o.split_rows = std::min<int64_t>(128, shard);
    o.bytes = row_bytes(32, 8, 128, 2);
    TaskSet set;
    const double t_form = bench::best_seconds(repeats, [&] { set = form_tasks(layout, shard); });
    Schedule sched;
    const double t_sched = bench::best_seconds(repeats, [&] { sched = schedule_tasks(set, CostModel(), o); });
    AttentionPlan plan;
    const double t_plan = bench::best_seconds(repeats, [&] { plan = build_plan(sched, o.bytes, shard); });
    const double t_arena = bench::best_seconds(repeats, [&] {
      google::protobuf::Arena arena;
      build_plan(sched, o.bytes, shard, &arena);
    });
    const double step = gpu_step_s(docs, servers);
    table.add({std::to_string(servers), std::to_string(shard), std::to_string(set.tasks.size()),
               std::to_string(sched.moves), std::to_string(sched.splits), fmt::format("{:.3f}", sched.imbalance()),
               sched.balanced ? "yes" : (sched.reason.find("indivisible") != std::string::npos ? "no: indivisible piece" : "no"), fmt::format("{:.3f}", 1e3 * t_form), fmt::format("{:.3f}", 1e3 * t_sched),
               fmt::format("{:.1f}x", t_sched / t_form), fmt::format("{:.3f}", 1e3 * t_plan),
               fmt::format("{:.3f}", 1e3 * t_arena), fmt::format("{:.1f}", 1e3 * step),
               fmt::format("{:.2f}%", 100 * (t_sched + t_arena) / step)});
    xs->push_back(by_tasks ? static_cast<double>(set.tasks.size()) : servers);
    ys->push_back(t_sched + t_arena);
    ys_sched->push_back(t_sched);
    fmt::print(stderr, "servers {} shard {}: {:.3f} ms\n", servers, shard, 1e3 * (t_sched + t_arena));
  };
  const std::vector<std::string> header = {"servers", "shard", "tasks", "moves", "splits", "imbalance", "balanced",
                                           "form ms (ref)", "schedule ms", "vs form", "plan ms", "plan ms (arena)",
                                           "GPU step ms", "sched+plan(arena) / step"};
  bench::Table by_servers(header);
  std::vector<double> xs, ys, ys_sched;
  if (only_servers > 0) {
    run(only_servers, only_shard > 0 ? only_shard : std::min<int64_t>(2048, std::max<int64_t>(128, tokens / only_servers / 4)),
        by_servers, &xs, &ys, &ys_sched, false);
    by_servers.print();
    return 0;
  }
  for (uint32_t s = 8; s <= 4096; s *= 2) {
    if (tokens / s < 1) break;
    run(s, std::min<int64_t>(2048, std::max<int64_t>(128, tokens / s / 4)), by_servers, &xs, &ys, &ys_sched, false);
  }
  fmt::print("## Scheduler time vs servers (shard = tokens per server / 4, in [128, 2048])\n\n");
  by_servers.print();
  fmt::print("\ngrowth law: schedule time ~ servers^{:.2f}; schedule + plan (arena) ~ servers^{:.2f}\n\n",
             slope(xs, ys_sched), slope(xs, ys));

  bench::Table by_tasks(header);
  std::vector<double> xt, yt, yt_sched;
  for (int64_t shard : {2048, 1024, 512, 256, 128}) run(512, shard, by_tasks, &xt, &yt, &yt_sched, true);
  fmt::print("## Scheduler time vs tasks (512 servers)\n\n");
  by_tasks.print();
  fmt::print("\ngrowth law: schedule time ~ tasks^{:.2f}; schedule + plan (arena) ~ tasks^{:.2f}\n",
             slope(xt, yt_sched), slope(xt, yt));
  return 0;
}
