// The MFU denominator: this machine's FP32 matmul peak, taken as the best OpenBLAS sgemm rate ever
// measured here at this thread count (a calibration cached per machine), not one start-up
// measurement, which another job on the machine can halve (that made MFU read 150%). Every
// start-up measurement joins the calibration; `cadtrain calibrate` measures afresh and replaces
// it (after a hardware or BLAS change). A step that runs faster than the calibrated peak proves it
// low: the peak is raised to that step's rate, so MFU never exceeds 100%.
#pragma once

#include <cstdint>
#include <string>

namespace cadtrain::trainer {

struct PeakCalibration {
  double gflops = 0;          // the MFU denominator
  double measured_now = 0;    // this start-up's sgemm rate
  uint64_t measurements = 0;  // start-up measurements the peak is the best of
  std::string key;            // the machine and thread count it holds for
  std::string note;           // "" or why the cache was not used (unreadable, replaced)
};

// The cache file: $CADTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/cadtrain, else
// $HOME/.cache/cadtrain, then /machine_peak.json.
std::string default_peak_cache_path();

// The machine and thread count a calibration holds for: CPU model (from /proc/cpuinfo), logical
// CPUs online and OpenMP threads.
std::string this_machine_key(int threads);

// Merges a measurement into the calibration stored for key at cache_path (the best so far, or with
// replace this measurement alone) and writes the cache back atomically. A cache that cannot be read
// is replaced and says so in note; one that cannot be written is noted, never an error (MFU is
// a report, not training state).
PeakCalibration calibrate_peak(const std::string& cache_path, const std::string& key, double measured_gflops,
                               bool replace);

// Model FLOP/s over the peak in [0, 1]; a rate above the peak first raises the peak to it.
double mfu_against(double flops_per_second, PeakCalibration* peak);

// The first field of /proc/loadavg text (the 1-minute load average); throws naming the text if
// it is not a number.
double parse_load_average(const std::string& loadavg_text);

// A warning when other work visibly uses the cores at start-up (load average above half the
// logical CPUs, or sgemm now under 70% of the calibrated peak), else "".
std::string load_warning(double load_average, unsigned logical_cpus, double measured_gflops, double peak_gflops);

// load_warning() for this machine now (/proc/loadavg; no load check where it cannot be read).
std::string startup_load_warning(double measured_gflops, double peak_gflops);

}  // namespace cadtrain::trainer
