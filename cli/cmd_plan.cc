// `cadtrain plan`: simulate a cluster for every attention strategy (attention_servers/planner.h)
// and print a table; optionally JSON and CSV with every per-rank figure and a PNG of per-rank
// load (gnuplot, launch/plot_plan.gp). `--reproduce` prints the published reference points of
// DESIGN section 9 beside ours.
#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "attention_servers/planner.h"
#include "cli/commands.h"
#include "cli/config_options.h"
#include "common/error.h"

namespace cadtrain::cli {
namespace {

using attention_servers::PlannerReport;
using attention_servers::RankFigures;
using attention_servers::StrategyResult;

struct PlanOutputs {
  std::string json, csv, plot;
  bool reproduce = false;
};

nlohmann::json rank_json(const RankFigures& k, size_t i) {
  return {{"rank", i},
          {"role", k.role},
          {"tokens", k.tokens},
          {"attention_s", k.attention_s},
          {"linear_s", k.linear_s},
          {"busy_s", k.busy_s()},
          {"memory_bytes", k.memory_bytes},
          {"bytes_sent", k.bytes_sent},
          {"bytes_received", k.bytes_received},
          {"comm_s", k.comm_s},
          {"exposed_comm_s", k.exposed_comm_s}};
}

void write_json(const PlannerReport& rep, const config::RunConfig& cfg, const std::string& path) {
  nlohmann::json j;
  j["config"] = cfg.name();
  j["gpus"] = rep.machine.gpus;
  j["ranks"] = rep.machine.ranks;
  j["tensor_parallel"] = rep.machine.tp;
  j["tokens_per_rank"] = rep.machine.tokens_per_rank;
  j["batches"] = rep.batches.size();
  j["documents"] = rep.documents;
  j["assumptions"] = rep.assumptions;
  j["per_rank_figures_of"] = "batch 0";
  nlohmann::json list = nlohmann::json::array();
  for (size_t s = 0; s < rep.mean.size(); ++s) {
    const StrategyResult& r = rep.mean[s];
    nlohmann::json e = {{"strategy", r.strategy},
                        {"servers", r.servers},
                        {"compute_imbalance", r.compute_imbalance},
                        {"idle_fraction", r.idle_fraction},
                        {"exposed_comm_fraction", r.exposed_comm_fraction},
                        {"step_time_s", r.step_time_s},
                        {"speedup_vs_packing", r.speedup_vs_packing},
                        {"bytes_moved", r.bytes_moved},
                        {"balanced", r.balanced},
                        {"fits_memory", r.fits_memory},
                        {"note", rep.batches[0][s].note}};
    if (r.strategy.rfind("cad", 0) == 0) {
      e["forward_bytes"] = r.bytes_forward;
      e["forward_bytes_counted_as_published"] = r.bytes_published_count;
    }
    nlohmann::json per_batch = nlohmann::json::array();
    for (const auto& batch : rep.batches) {
      per_batch.push_back({{"step_time_s", batch[s].step_time_s},
                           {"compute_imbalance", batch[s].compute_imbalance},
                           {"idle_fraction", batch[s].idle_fraction},
                           {"exposed_comm_fraction", batch[s].exposed_comm_fraction}});
    }
    e["per_batch"] = per_batch;
    nlohmann::json ranks = nlohmann::json::array();
    const auto& rk = rep.batches[0][s].ranks;
    for (size_t i = 0; i < rk.size(); ++i) ranks.push_back(rank_json(rk[i], i));
    e["ranks"] = ranks;
    list.push_back(e);
  }
  j["strategies"] = list;
  std::ofstream out(path);
  if (!out) fail("--json {}: cannot open for writing", path);
  out << j.dump(1) << "\n";
  if (!out) fail("--json {}: write failed", path);
}

void write_csv(const PlannerReport& rep, const std::string& path) {
  std::ofstream out(path);
  if (!out) fail("--csv {}: cannot open for writing", path);
  out << "strategy,batch,rank,role,tokens,attention_s,linear_s,busy_s,memory_bytes,bytes_sent,bytes_received,comm_s,"
         "exposed_comm_s\n";
  for (size_t b = 0; b < rep.batches.size(); ++b) {
    for (const StrategyResult& r : rep.batches[b]) {
      for (size_t i = 0; i < r.ranks.size(); ++i) {
        const RankFigures& k = r.ranks[i];
        out << fmt::format("{},{},{},{},{},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g}\n", r.strategy, b, i,
                           k.role, k.tokens, k.attention_s, k.linear_s, k.busy_s(), k.memory_bytes, k.bytes_sent,
                           k.bytes_received, k.comm_s, k.exposed_comm_s);
      }
    }
  }
  if (!out) fail("--csv {}: write failed", path);
}

void plot(const PlannerReport& rep, const std::string& csv, const std::string& png) {
  std::string names;
  for (const auto& r : rep.mean) names += (names.empty() ? "" : " ") + r.strategy;
  const std::string script = std::string(CADTRAIN_SOURCE_DIR) + "/launch/plot_plan.gp";
  const std::string cmd = fmt::format("gnuplot -e \"csv='{}'; png='{}'; strategies='{}'\" '{}'", csv, png, names, script);
  if (std::system(cmd.c_str()) != 0) {
    fail("--plot {}: gnuplot failed ({}); launch/install_deps.sh installs gnuplot-nox", png, cmd);
  }
}

void print_report(const PlannerReport& rep, const config::RunConfig& cfg) {
  const auto& m = rep.machine;
  fmt::print("cadtrain plan: {} | {} GPUs ({} ranks of TP{}) | {} tokens per rank | {} batches, {} documents, mean "
             "{:.0f}, max {:.0f} tokens\n",
             cfg.name(), m.gpus, m.ranks, m.tp, m.tokens_per_rank, rep.batches.size(), rep.documents,
             rep.mean_doc_tokens, rep.max_doc_tokens);
  fmt::print("assumptions:\n");
  for (const auto& a : rep.assumptions) fmt::print("  - {}\n", a);
  fmt::print("\n| {:<16} | {:>7} | {:>10} | {:>7} | {:>9} | {:>6} | {:>8} | {:>11} | {:>10} | {:>4} |\n", "strategy",
             "servers", "step (s)", "speedup", "imbalance", "idle", "exposed", "GB moved", "max mem GB", "fits");
  fmt::print("|{:-<18}|{:->9}|{:->12}|{:->9}|{:->11}|{:->8}|{:->10}|{:->13}|{:->12}|{:->6}|\n", "", "", "", "", "", "", "",
             "", "", "");
  for (size_t s = 0; s < rep.mean.size(); ++s) {
    const StrategyResult& r = rep.mean[s];
    double mem = 0;
    for (const auto& k : rep.batches[0][s].ranks) mem = std::max(mem, k.memory_bytes);
    fmt::print(
        "| {:<16} | {:>7} | {:>10.4f} | {:>6.2f}x | {:>9.3f} | {:>5.1f}% | {:>7.1f}% | {:>11.2f} | {:>10.1f} | {:>4} |\n",
        r.strategy, r.servers ? std::to_string(r.servers) : "-", r.step_time_s, r.speedup_vs_packing,
        r.compute_imbalance, 100 * r.idle_fraction, 100 * r.exposed_comm_fraction, r.bytes_moved / 1e9, mem / m.tp / 1e9,
        r.fits_memory ? "yes" : "NO");
  }
  fmt::print("(max mem is per GPU, fits: within cluster.hbm_bytes; GB moved is all ranks, one step, all layers)\n");
  for (size_t s = 0; s < rep.mean.size(); ++s) {
    const StrategyResult& r = rep.mean[s];
    fmt::print("  {}: {}\n", r.strategy, rep.batches[0][s].note);
    if (r.strategy.rfind("cad", 0) == 0 && r.bytes_published_count > 0) {
      fmt::print("    forward bytes per step: {:.2f} GB ours; {:.2f} GB counted as the published system does (K/V "
                 "already on the server charged): {:.1f}% less\n",
                 r.bytes_forward / 1e9, r.bytes_published_count / 1e9,
                 100 * (1 - r.bytes_forward / r.bytes_published_count));
    }
  }
  const StrategyResult* best = nullptr;
  for (const auto& r : rep.mean) {
    if (r.fits_memory && (best == nullptr || r.step_time_s < best->step_time_s)) best = &r;
  }
  if (best != nullptr) {
    fmt::print("\nfastest that fits in memory: {} ({:.2f}x over packing_dp)\n", best->strategy, best->speedup_vs_packing);
  } else {
    fmt::print("\nno strategy fits in memory\n");
  }
}

}  // namespace

void register_plan_commands(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("plan", "Simulate a cluster: every attention strategy on batches drawn from a "
                                             "document-length distribution");
  auto options = std::make_shared<ConfigOptions>();
  auto out = std::make_shared<PlanOutputs>();
  options->add_to(cmd);
  cmd->add_option("--json", out->json, "Write every figure (strategies, per-rank) as JSON");
  cmd->add_option("--csv", out->csv, "Write per-rank figures as CSV");
  cmd->add_option("--plot", out->plot, "Write a PNG of per-rank load for each strategy (gnuplot)");
  cmd->add_flag("--reproduce", out->reproduce,
                "Also run the published setups and print their figures beside the published ones");
  cmd->callback([options, out] {
    const config::RunConfig cfg = options->load();
    const PlannerReport rep = attention_servers::run_planner(cfg);
    print_report(rep, cfg);
    if (!out->json.empty()) write_json(rep, cfg, out->json);
    std::string csv = out->csv;
    if (csv.empty() && !out->plot.empty()) csv = out->plot + ".csv";
    if (!csv.empty()) write_csv(rep, csv);
    if (!out->plot.empty()) plot(rep, csv, out->plot);
    if (out->reproduce) {
      fmt::print("\npublished reference points (DESIGN section 9) beside ours:\n");
      fmt::print("| {:<62} | {:>19} | {:>7} | {} | {} |\n", "figure", "published", "ours", "setup", "comparison");
      for (const auto& r : attention_servers::reproduce_published(cfg)) {
        fmt::print("| {:<62} | {:>19} | {:>7} | {} | {} |\n", r.figure, r.published, r.ours, r.setup, r.comment);
      }
    }
  });
}

}  // namespace cadtrain::cli
