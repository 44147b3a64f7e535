// Subcommands of the `cadtrain` binary, one registration function per file.
#pragma once

#include <CLI/CLI.hpp>

namespace cadtrain::cli {

void register_data_commands(CLI::App& app);    // cmd_data.cc: data build | synth | inspect | prefs
void register_config_commands(CLI::App& app);  // cmd_config.cc: config check
void register_train_commands(CLI::App& app);   // cmd_train.cc: train
void register_eval_commands(CLI::App& app);    // cmd_eval.cc: eval | sample
void register_plan_commands(CLI::App& app);    // cmd_plan.cc: plan
void register_calibrate_command(CLI::App& app);  // cmd_calibrate.cc: calibrate
void register_merge_commands(CLI::App& app);   // cmd_merge.cc: merge
void register_distill_commands(CLI::App& app); // cmd_distill.cc: distill prepare
void register_po_commands(CLI::App& app);      // cmd_po.cc: po prepare-ref | eval

}  // namespace cadtrain::cli
