// Fuzzes the config loader: text format parsing, one --set override (after the first NUL byte),
// validation and the effective config. Any exception but cadtrain::Error is a bug (the binary
// would exit 2), and a config that loads must load again from its own effective text.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "configs/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string text = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos) overrides.push_back(input.substr(nul + 1));
  cadtrain::config::RunConfig cfg;
  try {
    cfg = cadtrain::config::parse_run_config(text, "fuzz.pbtxt", overrides);
  } catch (const cadtrain::Error&) {
    return 0;
  }
  (void)cadtrain::config::required_world_size(cfg);
  (void)cadtrain::config::run_dir(cfg);
  const std::string effective = cadtrain::config::effective_config_text(cfg, "fuzz");
  // Round trip: what we print must parse back (exceptions here, even Error, are findings).
  (void)cadtrain::config::parse_run_config(effective, "effective");
  return 0;
}
