// The training loop: data -> forward/backward (with gradient accumulation) -> AdamW -> logs,
// periodic evaluation and checkpoints; resumable bit for bit from any checkpoint.
#pragma once

#include <cstdint>
#include <string>

#include "configs/cadtrain.pb.h"
#include "trainer/evaluate.h"
#include "trainer/train_group.h"

namespace cadtrain::trainer {

struct TrainResult {
  uint64_t steps = 0;            // optimizer steps completed (including resumed ones)
  double first_loss = 0;         // loss of the first step this process ran
  double last_loss = 0;
  bool evaluated = false;
  EvalResult eval;               // final evaluation on data.eval_path
  std::string checkpoint;        // the last checkpoint written
};

// Trains per cfg. resume_from: a checkpoint file or run directory to continue from ("" = fresh).
// provenance describes where cfg came from (written into the effective config).
// Every rank of the job calls it with its own TrainGroup (train_group.h); the 3-argument form
// trains in this process alone.
TrainResult train(const config::RunConfig& cfg, const std::string& provenance, const std::string& resume_from,
                  TrainGroup& group);
TrainResult train(const config::RunConfig& cfg, const std::string& provenance, const std::string& resume_from);

}  // namespace cadtrain::trainer
