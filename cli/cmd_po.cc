// `cadtrain po prepare-ref | eval`: a reference model's log-probabilities written into a preference
// store; how often a model prefers the chosen response.
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "cli/commands.h"
#include "trainer/po_train.h"
#include "trainer/session.h"

namespace cadtrain::cli {

void register_po_commands(CLI::App& app) {
  CLI::App* po = app.add_subcommand("po", "Preference optimization: prepare reference log-probabilities");
  po->require_subcommand(1);
  CLI::App* eval = po->add_subcommand(
      "eval", "Share of (chosen, rejected) pairs where the model gives the chosen response the higher mean "
              "log-probability per token");
  struct EvalOptions {
    std::string model, prefs;
    uint32_t rejected = 0;
  };
  auto e = std::make_shared<EvalOptions>();
  eval->add_option("--model", e->model, "Checkpoint (file or run directory)")->required();
  eval->add_option("--prefs", e->prefs, "Preference store")->required();
  eval->add_option("--rejected", e->rejected, "Rejected responses per example (the first M; 0: all)");
  eval->callback([e] {
    const data::PrefsStore store = data::PrefsStore::open(e->prefs);
    int64_t rows = 1;
    for (uint64_t i = 0; i < store.num_examples(); ++i) {
      rows = std::max(rows, trainer::po_example_rows(store.example(i), e->rejected));
    }
    trainer::LoadedModel m = trainer::load_model(e->model, std::max<int64_t>(rows, 4096));
    // LOGO with beta 1, gamma 0, lambda 0: rewards are the mean log-probabilities per token.
    config::PreferenceConfig pc;
    pc.set_loss(config::LOGO);
    pc.set_beta(1);
    pc.set_gamma(0);
    pc.set_sft_weight(0);
    pc.set_rejected_per_example(e->rejected);
    const trainer::PoSums s =
        trainer::evaluate_preferences(*m.session.model, nullptr, store, pc, std::max<int64_t>(rows, 4096));
    fmt::print("{} on {}: accuracy {:.2f}% ({:.0f}/{:.0f} pairs) | mean log-prob per token: chosen {:.4f}, "
               "rejected {:.4f}\n",
               m.path, e->prefs, 100.0 * s.correct / s.pairs, s.correct, s.pairs, s.reward_chosen / s.examples,
               s.reward_rejected / s.examples);
  });
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
