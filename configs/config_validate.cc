// Validation: the (min)/(max) ranges declared in cadtrain.proto, checked generically by
// reflection, and the cross-field rules that no single field can express.
#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"
#include "configs/config.h"

namespace cadtrain::config {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// A numeric field's value as a double, or false when the field is not numeric.
bool numeric_value(const Message& msg, const FieldDescriptor* field, int index, double* out) {
  const Reflection* r = msg.GetReflection();
  const bool rep = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      *out = rep ? r->GetRepeatedInt32(msg, field, index) : r->GetInt32(msg, field);
      return true;
    case FieldDescriptor::CPPTYPE_INT64:
      *out = static_cast<double>(rep ? r->GetRepeatedInt64(msg, field, index) : r->GetInt64(msg, field));
      return true;
    case FieldDescriptor::CPPTYPE_UINT32:
      *out = rep ? r->GetRepeatedUInt32(msg, field, index) : r->GetUInt32(msg, field);
      return true;
    case FieldDescriptor::CPPTYPE_UINT64:
      *out = static_cast<double>(rep ? r->GetRepeatedUInt64(msg, field, index) : r->GetUInt64(msg, field));
      return true;
    case FieldDescriptor::CPPTYPE_FLOAT:
      *out = rep ? r->GetRepeatedFloat(msg, field, index) : r->GetFloat(msg, field);
      return true;
    case FieldDescriptor::CPPTYPE_DOUBLE:
      *out = rep ? r->GetRepeatedDouble(msg, field, index) : r->GetDouble(msg, field);
      return true;
    default:
      return false;
  }
}

void check_value(const FieldDescriptor* field, double value, const std::string& path,
                 std::vector<Problem>& problems) {
  const auto& opts = field->options();
  if (!std::isfinite(value)) {
    problems.push_back({path, fmt::format("{} must be finite (got {})", path, value)});
    return;
  }
  if (opts.HasExtension(min) && value < opts.GetExtension(min)) {
    problems.push_back({path, fmt::format("{} = {} is below its minimum {}", path, value,
                                          opts.GetExtension(min))});
  }
  if (opts.HasExtension(max) && value > opts.GetExtension(max)) {
    problems.push_back({path, fmt::format("{} = {} is above its maximum {}", path, value,
                                          opts.GetExtension(max))});
  }
}

// Walks every field that is set (defaults are in range by construction) and checks its range.
void check_ranges(const Message& msg, const std::string& prefix, std::vector<Problem>& problems) {
  const Reflection* r = msg.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(msg, &fields);
  for (const FieldDescriptor* field : fields) {
    const std::string path = prefix.empty() ? field->name() : prefix + "." + field->name();
    if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int i = 0; i < r->FieldSize(msg, field); ++i) {
          check_ranges(r->GetRepeatedMessage(msg, field, i), fmt::format("{}[{}]", path, i), problems);
        }
      } else {
        check_ranges(r->GetMessage(msg, field), path, problems);
      }
      continue;
    }
    const int n = field->is_repeated() ? r->FieldSize(msg, field) : 1;
    for (int i = 0; i < n; ++i) {
      double value = 0;
      if (!numeric_value(msg, field, i, &value)) break;
      check_value(field, value, field->is_repeated() ? fmt::format("{}[{}]", path, i) : path, problems);
    }
  }
}

void check_model(const ModelConfig& m, std::vector<Problem>& problems) {
  const uint32_t kv = kv_heads(m);
  if (kv > m.n_heads() || m.n_heads() % kv != 0) {
    problems.push_back({"model.n_kv_heads",
                        fmt::format("model.n_heads ({}) is not divisible by model.n_kv_heads ({})",
                                    m.n_heads(), kv)});
  }
  if (m.head_dim() == 0 && m.d_model() % m.n_heads() != 0) {
    problems.push_back({"model.n_heads",
                        fmt::format("model.d_model ({}) is not divisible by model.n_heads ({}); "
                                    "set model.head_dim explicitly or change one of them",
                                    m.d_model(), m.n_heads())});
  } else if (head_dim(m) % 2 != 0) {
    problems.push_back({m.head_dim() == 0 ? "model.n_heads" : "model.head_dim",
                        fmt::format("head dimension {} must be even (RoPE rotates pairs)", head_dim(m))});
  }
  if (m.layer_kinds_size() != 0 && static_cast<uint32_t>(m.layer_kinds_size()) != m.n_layers()) {
    problems.push_back({"model.layer_kinds",
                        fmt::format("model.layer_kinds has {} entries but model.n_layers is {}",
                                    m.layer_kinds_size(), m.n_layers())});
  }
}

void check_parallel(const RunConfig& cfg, std::vector<Problem>& problems) {
  const ParallelConfig& p = cfg.parallel();
  const AttentionConfig& a = cfg.attention();
  if (a.strategy() == LOCAL && p.context_parallel() != 1) {
    problems.push_back({"parallel.context_parallel",
                        fmt::format("parallel.context_parallel ({}) needs attention.strategy RING or "
                                    "TOKENRING; LOCAL attention keeps each sequence on one rank",
                                    p.context_parallel())});
  }
  if (a.strategy() == CAD) {
    if (p.context_parallel() != 1) {
      problems.push_back({"parallel.context_parallel",
                          fmt::format("attention.strategy CAD distributes core attention itself; "
                                      "parallel.context_parallel must be 1 (got {})",
                                      p.context_parallel())});
    }
    const CadOptions& cad = a.cad();
    if (cad.mode() == INPLACE && cad.dedicated_servers() != 0) {
      problems.push_back({"attention.cad.dedicated_servers",
                          fmt::format("attention.cad.dedicated_servers ({}) must be 0 in INPLACE mode",
                                      cad.dedicated_servers())});
    }
    if (cad.mode() == DEDICATED && cad.dedicated_servers() == 0) {
      problems.push_back({"attention.cad.dedicated_servers",
                          "attention.cad.mode DEDICATED needs attention.cad.dedicated_servers >= 1"});
    }
    if (cfg.device() == CUDA && cad.shard_tokens() % 128 != 0) {
      problems.push_back({"attention.cad.shard_tokens",
                          fmt::format("attention.cad.shard_tokens ({}) must be a multiple of 128 on CUDA",
                                      cad.shard_tokens())});
    }
    if (cad.calibrate_cost() && cad.calibration_size() == 0) {
      problems.push_back({"attention.cad.calibration",
                          "attention.cad.calibrate_cost needs attention.cad.calibration points "
                          "(bench/cad_calibrate prints them)"});
    }
  }
  if (p.world_size() != 0 && p.world_size() != required_world_size(cfg)) {
    problems.push_back({"parallel.world_size",
                        fmt::format("parallel.world_size ({}) != parallel.data_parallel ({}) x "
                                    "parallel.context_parallel ({}) + attention.cad.dedicated_servers ({}) = {}",
                                    p.world_size(), p.data_parallel(), p.context_parallel(),
                                    required_world_size(cfg) - trainer_ranks(cfg),
                                    required_world_size(cfg))});
  }
}

// A relative path that cannot leave the directory it is joined to.
bool stays_inside(const std::string& relative) {
  const std::filesystem::path p(relative);
  if (p.is_absolute() || !p.has_filename() || relative.find('\0') != std::string::npos) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

void check_run(const RunConfig& cfg, std::vector<Problem>& problems) {
  if (cfg.name().empty() || cfg.name().find('/') != std::string::npos || cfg.name() == "." || cfg.name() == "..") {
    problems.push_back(
        {"name", fmt::format("name \"{}\" must be non-empty and contain no '/' (nor be . or ..)", cfg.name())});
  }
  if (cfg.schedule().warmup_steps() > cfg.schedule().total_steps()) {
    problems.push_back({"schedule.warmup_steps",
                        fmt::format("schedule.warmup_steps ({}) > schedule.total_steps ({})",
                                    cfg.schedule().warmup_steps(), cfg.schedule().total_steps())});
  }
  if (cfg.data().train_path().empty()) {
    problems.push_back({"data.train_path", "data.train_path must not be empty"});
  }
  if (cfg.logging().metrics_file().empty()) {
    problems.push_back({"logging.metrics_file", "logging.metrics_file must not be empty"});
  } else if (!stays_inside(cfg.logging().metrics_file())) {
    problems.push_back({"logging.metrics_file",
                        fmt::format("logging.metrics_file \"{}\" must be a file name inside the run directory (a "
                                    "relative path without '..')",
                                    cfg.logging().metrics_file())});
  }
}

// Cross-field rules of a synthetic-corpus config; ranges are checked with everything else.
void check_synth_rules(const SynthConfig& s, const std::string& prefix, std::vector<Problem>& problems) {
  if (s.min_doc_tokens() > s.max_doc_tokens()) {
    problems.push_back({prefix + ".min_doc_tokens",
                        fmt::format("{0}.min_doc_tokens ({1}) > {0}.max_doc_tokens ({2})", prefix,
                                    s.min_doc_tokens(), s.max_doc_tokens())});
  }
  if (s.mean_doc_tokens() < s.min_doc_tokens() || s.mean_doc_tokens() > s.max_doc_tokens()) {
    problems.push_back({prefix + ".mean_doc_tokens",
                        fmt::format("{0}.mean_doc_tokens ({1}) is outside [{0}.min_doc_tokens ({2}), "
                                    "{0}.max_doc_tokens ({3})]",
                                    prefix, s.mean_doc_tokens(), s.min_doc_tokens(), s.max_doc_tokens())});
  }
}

// A curriculum must admit some data at step 0 and all of it within the run.
void check_curriculum(const RunConfig& cfg, std::vector<Problem>& problems) {
  const CurriculumConfig& c = cfg.data().curriculum();
  if (c.pacing() == PACING_NONE) return;
  if (!(c.start_fraction() > 0)) {
    problems.push_back({"data.curriculum.start_fraction",
                        fmt::format("data.curriculum.start_fraction = {} must be > 0: the first steps would have "
                                    "no eligible document",
                                    c.start_fraction())});
  }
  if (c.full_at_step() > cfg.schedule().total_steps()) {
    problems.push_back({"data.curriculum.full_at_step",
                        fmt::format("data.curriculum.full_at_step ({}) > schedule.total_steps ({}): the hardest "
                                    "documents would never be admitted (0 means total_steps)",
                                    c.full_at_step(), cfg.schedule().total_steps())});
  }
}

}  // namespace

std::vector<Problem> find_synth_problems(const SynthConfig& s, const std::string& prefix) {
  std::vector<Problem> problems;
  check_ranges(s, prefix, problems);
  check_synth_rules(s, prefix, problems);
  return problems;
}

std::vector<Problem> find_problems(const RunConfig& cfg) {
  std::vector<Problem> problems;
  check_ranges(cfg, "", problems);
  check_model(cfg.model(), problems);
  check_parallel(cfg, problems);
  check_run(cfg, problems);
  check_synth_rules(cfg.data().synth(), "data.synth", problems);
  check_curriculum(cfg, problems);
  return problems;
}

void validate(const RunConfig& cfg) {
  const auto problems = find_problems(cfg);
  if (problems.empty()) return;
  std::string text = "invalid config:";
  for (const auto& p : problems) text += "\n  " + p.message;
  throw Error(text);
}

void check_world_size(const RunConfig& cfg, uint32_t world_size) {
  if (world_size != required_world_size(cfg)) {
    fail("the launcher started {} ranks but the config needs parallel.data_parallel ({}) x "
         "parallel.context_parallel ({}) + attention.cad.dedicated_servers ({}) = {}",
         world_size, cfg.parallel().data_parallel(), cfg.parallel().context_parallel(),
         required_world_size(cfg) - trainer_ranks(cfg), required_world_size(cfg));
  }
}

}  // namespace cadtrain::config
