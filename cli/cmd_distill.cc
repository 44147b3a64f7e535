// `cadtrain distill prepare`: the teacher's top-K store for a dataset.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "trainer/distill_prepare.h"

namespace cadtrain::cli {

void register_distill_commands(CLI::App& app) {
  CLI::App* distill = app.add_subcommand("distill", "Distillation: prepare a teacher's top-K store");
  distill->require_subcommand(1);
  CLI::App* prepare = distill->add_subcommand(
      "prepare", "Stream a dataset through a teacher and store its top-K ids and log-probabilities per token");
  auto o = std::make_shared<trainer::DistillPrepareOptions>();
  prepare->add_option("--teacher", o->teacher, "Teacher checkpoint (file or run directory)")->required();
  prepare->add_option("--data", o->data, "Dataset (HDF5) the student will train on")->required();
  prepare->add_option("--k", o->k, "Ids kept per token")->capture_default_str();
  prepare->add_option("--out", o->out, "Teacher store to write (HDF5, written atomically)")->required();
  prepare->add_option("--tokens-per-batch", o->tokens_per_batch,
                      "Tokens per teacher forward (default: the teacher's data.tokens_per_micro_batch)");
  prepare->callback([o] {
    const trainer::DistillPrepareSummary s = trainer::distill_prepare(*o);
    fmt::print("wrote {}: top-{} of {} tokens in {} batches, mean top-{} mass {:.3f}, {:.1f} s{}\n", o->out, o->k,
               s.tokens, s.batches, o->k, s.mean_top_k_mass, s.seconds,
               s.cut_documents > 0 ? fmt::format(" ({} documents longer than a batch were cut)", s.cut_documents)
                                   : std::string());
  });
}

}  // namespace cadtrain::cli
