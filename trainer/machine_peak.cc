// The cached per-machine sgemm calibration behind MFU (see machine_peak.h).
#include "trainer/machine_peak.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/durable_file.h"
#include "common/error.h"

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::string name = line.substr(colon + 1);
    name.erase(0, name.find_first_not_of(" \t"));
    return name;
  }
  return "unknown CPU";
}

// The cache as JSON: {"machines": {key: {"gflops": best, "measurements": n}}}. Returns an empty
// object (and sets note) when the file exists but does not hold that.
nlohmann::json read_cache(const std::string& path, std::string* note) {
  nlohmann::json cache = {{"machines", nlohmann::json::object()}};
  std::error_code ec;
  if (!fs::exists(path, ec)) return cache;
  try {
    std::ifstream in(path);
    nlohmann::json parsed = nlohmann::json::parse(in);
    if (!parsed.is_object() || !parsed.contains("machines") || !parsed["machines"].is_object()) {
      throw std::runtime_error("no \"machines\" object");
    }
    for (const auto& [key, entry] : parsed["machines"].items()) {
      if (!entry.is_object() || !entry.contains("gflops") || !entry["gflops"].is_number() ||
          !(entry["gflops"].get<double>() > 0) || !entry.contains("measurements") ||
          !entry["measurements"].is_number_unsigned()) {
        throw std::runtime_error(fmt::format("entry \"{}\" is not {{gflops > 0, measurements}}", key));
      }
    }
    return parsed;
  } catch (const std::exception& e) {
    *note = fmt::format("calibration cache {} unreadable ({}): replaced", path, e.what());
    return cache;
  }
}

void write_cache(const std::string& path, const nlohmann::json& cache, std::string* note) {
  try {
    const fs::path dir = fs::path(path).parent_path();
    if (!dir.empty()) fs::create_directories(dir);
    const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << cache.dump(2) << '\n';
      out.close();
      if (!out) fail("cannot write {}", tmp);
    }
    publish_file(tmp, path);
  } catch (const std::exception& e) {
    *note = fmt::format("calibration not saved: {}", e.what());
  }
}

}  // namespace

std::string default_peak_cache_path() {
  fs::path dir;
  if (const char* d = std::getenv("CADTRAIN_CACHE_DIR"); d != nullptr && *d != '\0') {
    dir = d;
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    dir = fs::path(x) / "cadtrain";
  } else if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') {
    dir = fs::path(h) / ".cache" / "cadtrain";
  } else {
    dir = fs::temp_directory_path() / "cadtrain";
  }
  return (dir / "machine_peak.json").string();
}

std::string this_machine_key(int threads) {
  return fmt::format("{} | {} logical CPUs | {} threads", cpu_model_name(), std::thread::hardware_concurrency(),
                     threads);
}

PeakCalibration calibrate_peak(const std::string& cache_path, const std::string& key, double measured_gflops,
                               bool replace) {
  CADTRAIN_CHECK(measured_gflops > 0, "calibrate_peak: measured {} GFLOP/s must be > 0", measured_gflops);
  PeakCalibration c;
  c.key = key;
  c.measured_now = measured_gflops;
  nlohmann::json cache = read_cache(cache_path, &c.note);
  nlohmann::json& entry = cache["machines"][key];
  if (replace || entry.is_null()) {
    c.gflops = measured_gflops;
    c.measurements = 1;
  } else {
    c.gflops = std::max(entry["gflops"].get<double>(), measured_gflops);
    c.measurements = entry["measurements"].get<uint64_t>() + 1;
  }
  entry = {{"gflops", c.gflops}, {"measurements", c.measurements}};
  std::string write_note;
  write_cache(cache_path, cache, &write_note);
  if (!write_note.empty()) c.note = c.note.empty() ? write_note : c.note + "; " + write_note;
  return c;
}

double mfu_against(double flops_per_second, PeakCalibration* peak) {
  const double gflops = flops_per_second / 1e9;
  if (gflops > peak->gflops) peak->gflops = gflops;
  return peak->gflops > 0 ? gflops / peak->gflops : 0;
}

double parse_load_average(const std::string& loadavg_text) {
  std::istringstream in(loadavg_text);
  double load = -1;
  if (!(in >> load) || !(load >= 0)) fail("cannot read a load average from '{}'", loadavg_text);
  return load;
}

std::string load_warning(double load_average, unsigned logical_cpus, double measured_gflops, double peak_gflops) {
  std::string why;
  if (logical_cpus > 0 && load_average > 0.5 * logical_cpus) {
    why = fmt::format("load average {:.2f} on {} logical CPUs", load_average, logical_cpus);
  }
  if (peak_gflops > 0 && measured_gflops < 0.7 * peak_gflops) {
    why += fmt::format("{}sgemm now {:.1f} GFLOP/s, {:.0f}% of this machine's calibrated {:.1f}", why.empty() ? "" : "; ",
                       measured_gflops, 100 * measured_gflops / peak_gflops, peak_gflops);
  }
  if (why.empty()) return "";
  return fmt::format("the machine is busy ({}): steps will be slower and MFU lower than on a quiet machine", why);
}

std::string startup_load_warning(double measured_gflops, double peak_gflops) {
  std::ifstream in("/proc/loadavg");
  std::string text;
  double load = 0;
  if (std::getline(in, text)) {
    try {
      load = parse_load_average(text);
    } catch (const Error&) {
      load = 0;  // an unreadable load average is no reason to warn
    }
  }
  return load_warning(load, std::thread::hardware_concurrency(), measured_gflops, peak_gflops);
}

}  // namespace cadtrain::trainer
