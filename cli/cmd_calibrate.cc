// `cadtrain calibrate`: measure this machine's sgemm peak afresh (the MFU denominator, see
// trainer/machine_peak.h) and replace the cached calibration with it. Run it on a quiet machine.
#include <fmt/format.h>
#include <omp.h>

#include <memory>

#include "cli/commands.h"
#include "kernels/sgemm_peak.h"
#include "trainer/machine_peak.h"

namespace cadtrain::cli {

void register_calibrate_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("calibrate", "Re-measure the sgemm peak that MFU is stated against");
  auto threads = std::make_shared<int>(0);
  auto repeats = std::make_shared<int>(10);
  cmd->add_option("--threads", *threads, "OpenMP threads (default: OMP_NUM_THREADS or all); train uses parallel.threads");
  cmd->add_option("--repeats", *repeats, "Best of this many 2048^3 products")->check(CLI::Range(1, 1000));
  cmd->callback([threads, repeats] {
    if (*threads > 0) omp_set_num_threads(*threads);
    const int used = omp_get_max_threads();
    const double gflops = kernels::measure_sgemm_gflops(2048, *repeats);
    const std::string path = trainer::default_peak_cache_path();
    const trainer::PeakCalibration c = trainer::calibrate_peak(path, trainer::this_machine_key(used), gflops, true);
    fmt::print("calibrated {}: {:.1f} GFLOP/s (best of {}), saved in {}\n", c.key, c.gflops, *repeats, path);
    if (!c.note.empty()) fmt::print("note: {}\n", c.note);
    const std::string warning = trainer::startup_load_warning(gflops, 0);
    if (!warning.empty()) fmt::print("warning: {}; calibrate again when it is quiet\n", warning);
  });
}

}  // namespace cadtrain::cli
