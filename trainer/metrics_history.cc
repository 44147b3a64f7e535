// Trimming metrics.jsonl on resume (see metrics_history.h).
#include "trainer/metrics_history.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "common/error.h"

namespace cadtrain::trainer {

uint64_t keep_metrics_up_to(const std::string& path, uint64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return 0;
  std::string kept;
  uint64_t dropped = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_unsigned() && j["step"].get<uint64_t>() <= step) {
      kept += line + '\n';
    } else {
      ++dropped;
    }
  }
  if (in.bad()) fail("cannot read metrics file {}", path);
  if (dropped == 0) return 0;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << kept;
    out.close();
    if (!out) fail("cannot write {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("cannot rename {} to {}: {}", tmp, path, ec.message());
  return dropped;
}

}  // namespace cadtrain::trainer
