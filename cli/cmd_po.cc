// `cadtrain po prepare-ref`: a reference model's log-probabilities written into a preference store.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "trainer/po_train.h"

namespace cadtrain::cli {

void register_po_commands(CLI::App& app) {
  CLI::App* po = app.add_subcommand("po", "Preference optimization: prepare reference log-probabilities");
  po->require_subcommand(1);
  CLI::App* prepare = po->add_subcommand(
      "prepare-ref", "Store log pi_ref(y|x) of every response of a preference store (for the LN losses)");
  auto o = std::make_shared<trainer::PrepareRefOptions>();
  prepare->add_option("--reference", o->reference, "Reference checkpoint (file or run directory)")->required();
  prepare->add_option("--prefs", o->prefs, "Preference store (from `cadtrain data prefs`)")->required();
  prepare->add_option("--out", o->out, "Store to write (default: rewrite --prefs in place, atomically)");
  prepare->callback([o] {
    const trainer::PrepareRefSummary s = trainer::prepare_reference(*o);
    fmt::print("wrote {}: reference log-probabilities of {} responses ({} examples), mean {:.4f} per token, {:.1f} s\n",
               o->out.empty() ? o->prefs : o->out, s.responses, s.examples, s.mean_logp_per_token, s.seconds);
  });
}

}  // namespace cadtrain::cli
