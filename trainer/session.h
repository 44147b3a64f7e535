// A model ready to run: backend, core attention and model built from a run config, with
// helpers to map it to checkpoint tensors. Shared by train, eval and sample.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "trainer/checkpoint.h"
#include "trainer/model.h"

namespace cadtrain::trainer {

class AdamW;

struct ModelSession {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<kernels::CoreAttention> attention;
  std::unique_ptr<Model> model;
};

// Throws unless this build can train cfg on a job of world_size ranks (device, attention
// strategy, parallel layout): called before any expensive work such as generating data.
void check_supported(const config::RunConfig& cfg, uint32_t world_size = 1);

// Builds the model for micro-batches of up to max_tokens in this process, with LOCAL attention
// (what eval and sample use, whatever layout trained it); throws for an unsupported device. Sets
// the OpenMP thread count from parallel.threads.
// attention: the core attention to run instead (a distributed strategy, TrainGroup::
// make_core_attention); nullptr for LOCAL.
ModelSession make_model_session(const config::RunConfig& cfg, int64_t max_tokens,
                                std::unique_ptr<kernels::CoreAttention> attention = nullptr);

// The model's parameters (and the optimizer's moments when given) as named checkpoint tensors.
CheckpointTensors checkpoint_tensors(Model& model, AdamW* optimizer);

// A model rebuilt from a checkpoint: its config (from the checkpoint, with overrides applied)
// and its weights, for micro-batches of up to max_tokens (0: the config's tokens_per_micro_batch).
struct LoadedModel {
  std::string path;  // the checkpoint file read
  config::RunConfig cfg;
  uint64_t step = 0;
  ModelSession session;
};
LoadedModel load_model(const std::string& checkpoint_or_dir, int64_t max_tokens,
                       const std::vector<std::string>& overrides = {});

// The checkpoint to read for a path that is a checkpoint file, a run directory, or a
// checkpoints directory; throws naming the path when there is none.
std::string resolve_checkpoint(const std::string& path);

}  // namespace cadtrain::trainer
