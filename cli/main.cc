// cadtrain: parse the command line, run one subcommand, turn errors into a message and exit 1.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"cadtrain: long-context LM training with core attention disaggregation"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "cadtrain 0.1");
  cadtrain::cli::register_train_commands(app);
  cadtrain::cli::register_eval_commands(app);
  cadtrain::cli::register_data_commands(app);
  cadtrain::cli::register_config_commands(app);
  cadtrain::cli::register_plan_commands(app);
  cadtrain::cli::register_calibrate_command(app);
  cadtrain::cli::register_merge_commands(app);
  cadtrain::cli::register_distill_commands(app);
  cadtrain::cli::register_po_commands(app);
  try {
    app.parse(argc, argv);  // subcommand callbacks run inside parse()
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const cadtrain::Error& e) {
    fmt::print(stderr, "cadtrain: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "cadtrain: internal error: {}\n", e.what());
    return 2;
  }
  return 0;
}
