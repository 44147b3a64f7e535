// Loading: parse text format with locations, apply overrides, validate, and report each problem
// at the place the user wrote the value (file line:column, or the --set that set it).
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "configs/config.h"
#include "configs/config_text.h"

namespace cadtrain::config {
namespace {

constexpr uintmax_t kMaxConfigBytes = uintmax_t{16} << 20;

using google::protobuf::FieldDescriptor;
using google::protobuf::TextFormat;

// "model.layer_kinds[2]" -> {"model", -1}, {"layer_kinds", 2}
std::vector<std::pair<std::string, int>> split_path(const std::string& path) {
  std::vector<std::pair<std::string, int>> parts;
  std::stringstream ss(path);
  std::string part;
  while (std::getline(ss, part, '.')) {
    int index = -1;
    if (const auto open = part.find('['); open != std::string::npos) {
      index = std::stoi(part.substr(open + 1));
      part = part.substr(0, open);
    }
    parts.emplace_back(part, index);
  }
  return parts;
}

// The "line:column" where `path` was written in the parsed file, or "" when it was not.
std::string location_of(const std::string& path, const TextFormat::ParseInfoTree* tree) {
  const google::protobuf::Descriptor* desc = RunConfig::descriptor();
  const auto parts = split_path(path);
  for (size_t i = 0; i < parts.size() && tree != nullptr && desc != nullptr; ++i) {
    const FieldDescriptor* field = desc->FindFieldByName(parts[i].first);
    if (field == nullptr) return {};
    const int index = field->is_repeated() ? std::max(parts[i].second, 0) : -1;
    if (i + 1 == parts.size()) {
      const auto loc = tree->GetLocation(field, index);
      return loc.line < 0 ? std::string{} : fmt::format("{}:{}", loc.line + 1, loc.column + 1);
    }
    tree = tree->GetTreeForNested(field, index);
    desc = field->message_type();
  }
  return {};
}

// The override that set `path` (or a message above it), or "" when none did.
std::string override_of(const std::string& path, const std::vector<std::string>& overrides) {
  std::string found;
  for (const auto& o : overrides) {
    const std::string target = o.substr(0, o.find('='));
    if (path == target || path.rfind(target + ".", 0) == 0 || path.rfind(target + "[", 0) == 0) {
      found = o;  // the last override of a field wins, as when applying them
    }
  }
  return found;
}

}  // namespace

RunConfig parse_run_config(const std::string& text, const std::string& source,
                           const std::vector<std::string>& overrides) {
  RunConfig cfg;
  TextFormat::Parser parser;
  CollectingErrors errors(&text);
  TextFormat::ParseInfoTree tree;
  parser.RecordErrorsTo(&errors);
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &cfg)) {
    std::string message = fmt::format("cannot parse config {}:", source);
    for (const auto& e : errors.errors()) message += fmt::format("\n  {}:{}", source, e);
    throw Error(message);
  }
  for (const auto& o : overrides) apply_override(cfg, o);

  const auto problems = find_problems(cfg);
  if (problems.empty()) return cfg;
  std::string message = fmt::format("invalid config {}:", source);
  for (const auto& p : problems) {
    if (const std::string o = override_of(p.field, overrides); !o.empty()) {
      message += fmt::format("\n  --set {}: {}", o, p.message);
    } else if (const std::string loc = location_of(p.field, &tree); !loc.empty()) {
      message += fmt::format("\n  {}:{}: {}", source, loc, p.message);
    } else {
      message += fmt::format("\n  {}: {}", source, p.message);
    }
  }
  throw Error(message);
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  // Checked before opening: reading a directory yields an empty config, a FIFO blocks, and
  // /dev/zero never ends.
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::not_found) fail("cannot open config file {}: no such file", path);
  if (ec) fail("cannot open config file {}: {}", path, ec.message());
  if (std::filesystem::is_directory(status)) fail("config file {} is a directory", path);
  if (!std::filesystem::is_regular_file(status)) fail("config file {} is not a regular file (a FIFO or device?)", path);
  if (const auto size = std::filesystem::file_size(path, ec); !ec && size > kMaxConfigBytes) {
    fail("config file {} is {} bytes; a run config is text of at most {} bytes", path, size, kMaxConfigBytes);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open config file {}: {}", path, std::strerror(errno));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("cannot read config file {}", path);
  return parse_run_config(buffer.str(), path, overrides);
}

}  // namespace cadtrain::config
