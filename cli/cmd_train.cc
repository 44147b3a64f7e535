// `cadtrain train`: train from a config, or resume a run; one process, or every rank of an MPI
// job (mpirun/srun) when the config's layout or the launcher asks for more than one.
#include <fmt/format.h>
#include <omp.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/config_options.h"
#include "common/error.h"
#include "configs/config.h"
#include "parallel/mpi_runtime.h"   // MPI's lifetime, the world communicator
#include "parallel/topology.h"      // threads_per_rank
#include "trainer/checkpoint.h"
#include "trainer/parallel_group.h"  // the TrainGroup of an MPI job
#include "trainer/resume.h"
#include "trainer/session.h"
#include "trainer/stop_signal.h"
#include "trainer/train_loop.h"

namespace cadtrain::cli {
namespace {

// Ranks the launcher started, from its environment (mpirun: OMPI_COMM_WORLD_SIZE; srun and other
// PMI launchers: PMI_SIZE); 0 when there is none. A job of several ranks must initialise MPI even
// when the config asks for one (the layout check then names the mismatch).
int launcher_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(name); v != nullptr && std::atoi(v) > 0) return std::atoi(v);
  }
  return 0;
}

void print_result(const trainer::TrainResult& r) {
  fmt::print("done: {} steps, loss {:.6g} -> {:.6g}", r.steps, r.first_loss, r.last_loss);
  if (r.evaluated) {
    fmt::print(", eval loss {:.6g} ({}, {} tokens), retrieval accuracy {:.2f}%", r.eval.loss,
               trainer::eval_scope(r.eval), r.eval.tokens, 100 * r.eval.retrieval_accuracy);
  }
  fmt::print("\n");
}

// Every rank of an MPI job runs this. An error on any rank ends the whole job (the others may be
// blocked waiting for it), after printing it with the rank's identity.
void train_distributed(const config::RunConfig& cfg, const std::string& provenance, const std::string& checkpoint,
                       const std::vector<std::string>& notes) {
  // Before the communicator: its SIGTERM report chains to this graceful stop (parallel/watchdog.h).
  const trainer::StopSignals stop_signals;
  parallel::MpiRuntime mpi(nullptr, nullptr);
  try {
    const std::unique_ptr<parallel::Communicator> world = mpi.world(cfg.parallel().timeout_s());
    omp_set_num_threads(parallel::threads_per_rank(static_cast<int>(cfg.parallel().threads()),
                                                   std::getenv("OMP_NUM_THREADS"), mpi.node()));
    const std::unique_ptr<trainer::TrainGroup> group = trainer::make_parallel_group(*world, cfg);
    if (group->is_writer()) {
      for (const std::string& note : notes) fmt::print("{}\n", note);
    }
    const trainer::TrainResult r = trainer::train(cfg, provenance, checkpoint, *group);
    if (group->is_writer()) print_result(r);
  } catch (const std::exception& e) {
    fmt::print(stderr, "cadtrain: error: {}: {}\n", mpi.identity().describe(), e.what());
    std::fflush(stderr);
    std::fflush(stdout);
    mpi.abort_job(1);
  }
}

}  // namespace

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
    std::vector<std::string> notes;
    if (!resume->empty()) {
      const trainer::ResumePoint point = trainer::find_resume_point(*resume, *fallback);
      notes = point.notes;
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
    if (config::required_world_size(cfg) > 1 || launcher_ranks() > 1) {
      train_distributed(cfg, provenance, checkpoint, notes);
      return;
    }
    for (const std::string& note : notes) fmt::print("{}\n", note);
    print_result(trainer::train(cfg, provenance, checkpoint));
  });
}

}  // namespace cadtrain::cli
