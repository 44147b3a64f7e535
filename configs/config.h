// Run configs: load a text-format .pbtxt (configs/cadtrain.proto), apply `--set field=value`
// overrides, validate, and write the effective config beside a run's outputs.
//
// Every error names the source (file or --set), the line:column where the parser gives one, and
// the field, e.g. "configs/x.pbtxt:12:3: model.n_heads (12) is not divisible by
// model.n_kv_heads (5)". Unknown fields, wrong types and values out of the ranges the schema
// declares with (min)/(max) are all rejected.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"

namespace cadtrain::config {

// Reads and parses `path`, applies `overrides` ("a.b.c=value", in order), validates.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same for text already in memory; `source` names it in errors.
RunConfig parse_run_config(const std::string& text, const std::string& source,
                           const std::vector<std::string>& overrides = {});

// Applies one "a.b.c=value" assignment to cfg (no validation; load/parse validate afterwards).
// A repeated field takes a list, "[A, B]"; a message field takes text format, "{ x: 1 }".
void apply_override(RunConfig& cfg, const std::string& assignment);

// One rule a config breaks: the dotted path of the field at fault and what is wrong with it.
struct Problem {
  std::string field;
  std::string message;
};

// All range and cross-field problems of cfg (empty when it is valid).
std::vector<Problem> find_problems(const RunConfig& cfg);
// Throws cadtrain::Error listing every problem, one per line.
void validate(const RunConfig& cfg);
// The synthetic-corpus rules alone, for code that generates a corpus from a bare SynthConfig;
// `prefix` is the path of the message in errors (e.g. "data.synth").
std::vector<Problem> find_synth_problems(const SynthConfig& synth, const std::string& prefix);

// Checks the parallel layout against the number of ranks the launcher started.
void check_world_size(const RunConfig& cfg, uint32_t world_size);

// The config with every default made explicit, as commented text format.
std::string effective_config_text(const RunConfig& cfg, const std::string& provenance);
// Writes effective_config_text() to path (via a temporary file and rename).
void write_effective_config(const RunConfig& cfg, const std::string& provenance,
                            const std::string& path);

// Values the schema leaves to rules (0 = "derive it").
uint32_t kv_heads(const ModelConfig& model);
uint32_t head_dim(const ModelConfig& model);
uint32_t ffn_hidden(const ModelConfig& model);
LayerKind layer_kind(const ModelConfig& model, uint32_t layer);
// Ranks the layout needs: data_parallel * context_parallel trainers + dedicated servers.
uint32_t trainer_ranks(const RunConfig& cfg);
uint32_t required_world_size(const RunConfig& cfg);
// <output_dir>/<name>
std::string run_dir(const RunConfig& cfg);

}  // namespace cadtrain::config
