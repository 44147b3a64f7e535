// `cadtrain merge`: combine fine-tuned checkpoints of one model (soup, task arithmetic, TIES, DARE).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "trainer/merge.h"
#include "trainer/session.h"

namespace cadtrain::cli {
namespace {

struct MergeArgs {
  std::string base;
  std::vector<std::string> models;
  std::string method;
  std::string out;
  trainer::MergeOptions options;
};

void run_merge(MergeArgs& a) {
  const auto start = std::chrono::steady_clock::now();
  a.options.method = trainer::parse_merge_method(a.method);
  const std::string base = trainer::resolve_checkpoint(a.base);
  std::vector<std::string> models;
  for (const std::string& m : a.models) models.push_back(trainer::resolve_checkpoint(m));
  const trainer::MergeSummary s = trainer::merge_checkpoints(base, models, a.options, a.out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("merged {} models with {} (base {}) into {}: {} tensors, {} parameters, {:.1f} s\n", models.size(),
             a.method, base, a.out, s.tensors, s.parameters, seconds);
}

}  // namespace

void register_merge_commands(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("merge", "Merge checkpoints of one model: soup, task_arithmetic, ties, dare");
  auto a = std::make_shared<MergeArgs>();
  cmd->add_option("--base", a->base, "Base checkpoint (file or run directory): task vectors are models - base")
      ->required();
  cmd->add_option("--models", a->models, "Checkpoints to merge (files or run directories)")->required();
  cmd->add_option("--method", a->method, "soup | task_arithmetic | ties | dare")->required();
  cmd->add_option("--weights", a->options.weights, "One weight per model (default 1 each; soup normalizes them)");
  cmd->add_option("--density", a->options.density, "ties: fraction of each task vector kept, by magnitude");
  cmd->add_option("--drop", a->options.drop, "dare: probability of dropping each task-vector entry");
  cmd->add_option("--scale", a->options.scale, "Multiplies the merged task vector (not soup; default 1)");
  cmd->add_option("--seed", a->options.seed, "dare: seed of the drop masks");
  cmd->add_option("--out", a->out, "Output checkpoint file (written atomically)")->required();
  cmd->callback([a] { run_merge(*a); });
}

}  // namespace cadtrain::cli
