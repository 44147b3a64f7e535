// `cadtrain train`: train from a config, or resume a run.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "cli/config_options.h"
#include "common/error.h"
#include "configs/config.h"
#include "trainer/checkpoint.h"
#include "trainer/resume.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace cadtrain::cli {

void register_train_commands(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("train", "Train a model (the embedded tiny config by default)");
  auto options = std::make_shared<ConfigOptions>();
  auto resume = std::make_shared<std::string>();
  auto fallback = std::make_shared<bool>(false);
  options->add_to(cmd);
  cmd->add_option("--resume", *resume,
                  "Continue from a run directory or checkpoint; without --config its saved config is used and the "
                  "run continues in that directory");
  cmd->add_flag("--fallback", *fallback,
                "With --resume: when the newest checkpoint is corrupt, resume from the newest valid one (says so)");
  cmd->callback([options, resume, fallback] {
    config::RunConfig cfg;
    std::string provenance = options->provenance();
    std::string checkpoint;
    if (!resume->empty()) {
      const trainer::ResumePoint point = trainer::find_resume_point(*resume, *fallback);
      for (const std::string& note : point.notes) fmt::print("{}\n", note);
      checkpoint = point.path;
      if (options->path.empty()) {
        cfg = config::parse_run_config(point.state.config_text, checkpoint + " (saved config)",
                                       trainer::resume_overrides(*resume, options->sets));
        provenance = fmt::format("{} (resumed)", checkpoint);
      }
    } else if (*fallback) {
      fail("--fallback only applies with --resume");
    }
    if (!options->path.empty() || resume->empty()) cfg = options->load();
    const trainer::TrainResult r = trainer::train(cfg, provenance, checkpoint);
    fmt::print("done: {} steps, loss {:.6g} -> {:.6g}", r.steps, r.first_loss, r.last_loss);
    if (r.evaluated) {
      fmt::print(", eval loss {:.6g} ({}, {} tokens), retrieval accuracy {:.2f}%", r.eval.loss,
                 trainer::eval_scope(r.eval), r.eval.tokens, 100 * r.eval.retrieval_accuracy);
    }
    fmt::print("\n");
  });
}

}  // namespace cadtrain::cli
