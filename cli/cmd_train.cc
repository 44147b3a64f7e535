// `cadtrain train`: train from a config, or resume a run.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "cli/config_options.h"
#include "configs/config.h"
#include "trainer/checkpoint.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace cadtrain::cli {

void register_train_commands(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "Train a model (the embedded tiny config by default)");
  auto options = std::make_shared<ConfigOptions>();
  auto resume = std::make_shared<std::string>();
  options->add_to(cmd);
  cmd->add_option("--resume", *resume,
                  "Continue from a run directory or checkpoint; without --config its saved config is used");
  cmd->callback([options, resume] {
    config::RunConfig cfg;
    std::string provenance = options->provenance();
    if (!resume->empty() && options->path.empty()) {
      const std::string ckpt = trainer::resolve_checkpoint(*resume);
      cfg = config::parse_run_config(trainer::read_checkpoint_state(ckpt).config_text, ckpt, options->sets);
      provenance = fmt::format("{} (resumed)", ckpt);
    } else {
      cfg = options->load();
    }
    const trainer::TrainResult r = trainer::train(cfg, provenance, *resume);
    fmt::print("done: {} steps, loss {:.6g} -> {:.6g}", r.steps, r.first_loss, r.last_loss);
    if (r.evaluated) {
      fmt::print(", eval loss {:.6g} ({}, {} tokens), retrieval accuracy {:.2f}%", r.eval.loss,
                 trainer::eval_scope(r.eval), r.eval.tokens, 100 * r.eval.retrieval_accuracy);
    }
    fmt::print("\n");
  });
}

}  // namespace cadtrain::cli
