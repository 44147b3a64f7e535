// The --config / --set options every config-driven subcommand takes, and loading them.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "configs/config.h"

namespace cadtrain::cli {

struct ConfigOptions {
  std::string path;                // empty: the embedded default (the schema defaults, = configs/tiny_cpu.pbtxt)
  std::vector<std::string> sets;   // "field.path=value", applied in order

  void add_to(CLI::App* command) {
    command->add_option("-c,--config", path, "Run config (.pbtxt); default: the embedded tiny CPU config");
    command->add_option("--set", sets, "Override one field, e.g. --set optimizer.lr=3e-4 (repeatable)");
  }
  config::RunConfig load() const {
    return path.empty() ? config::parse_run_config("", "<embedded default>", sets)
                        : config::load_run_config(path, sets);
  }
  // Where the config came from, for the header of the effective config.
  std::string provenance() const {
    std::string text = path.empty() ? "<embedded default>" : path;
    for (const auto& s : sets) text += " --set " + s;
    return text;
  }
};

}  // namespace cadtrain::cli
