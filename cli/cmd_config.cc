// `cadtrain config check`: load, override and validate a config; print the effective config.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "cli/config_options.h"

namespace cadtrain::cli {

void register_config_commands(CLI::App& app) {
  CLI::App* config_cmd = app.add_subcommand("config", "Check run configs");
  config_cmd->require_subcommand(1);
  CLI::App* check = config_cmd->add_subcommand("check", "Validate a config and print it with every default");
  auto options = std::make_shared<ConfigOptions>();
  auto world_size = std::make_shared<uint32_t>(0);
  options->add_to(check);
  check->add_option("--world-size", *world_size, "Also check the layout against this many ranks");
  check->callback([options, world_size] {
    const config::RunConfig cfg = options->load();
    if (*world_size != 0) config::check_world_size(cfg, *world_size);
    fmt::print("{}", config::effective_config_text(cfg, options->provenance()));
    fmt::print(stderr, "config OK: {} ({} ranks)\n", options->provenance(), config::required_world_size(cfg));
  });
}

}  // namespace cadtrain::cli
