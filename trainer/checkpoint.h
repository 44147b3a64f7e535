// Checkpoints: one HDF5 file per saved step holding parameters, optimizer moments, the step,
// the data position and the config text. Written atomically (temporary file, fsync,
// rename, fsync of the directory), so a process killed while writing leaves the previous
// checkpoint intact; the newest keep_last are kept.
//
// File: <dir>/step_<00000123>.h5 with groups /params, /adam_m, /adam_v (one float32 dataset per
// tensor, named as the model names it, with its shape), attributes step, format_version,
// data_epoch, data_doc_cursor, data_batch_in_window, data_micro_batches, and a string dataset /config
// (the effective config, text format). Training draws no random numbers (data order is a
// function of (seed, epoch)), so no RNG state is saved; an rng_state attribute of older files is
// ignored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/packing.h"

namespace cadtrain::trainer {

// A named host tensor to save from or load into.
struct TensorRef {
  std::string name;               // e.g. "layers.0.attn.wq"
  std::vector<int64_t> shape;     // e.g. {256, 256}
  float* data = nullptr;          // prod(shape) floats
};

struct TrainingState {
  uint64_t step = 0;                   // optimizer steps completed
  data::PackerPosition data_position;
  std::string config_text;
};

// The tensors of one checkpoint, by group.
struct CheckpointTensors {
  std::vector<TensorRef> params;
  std::vector<TensorRef> adam_m;  // may be empty (weights-only checkpoint)
  std::vector<TensorRef> adam_v;
};

// Saves, prunes old checkpoints beyond keep_last, and returns the new file's path.
std::string save_checkpoint(const std::string& dir, const TrainingState& state, const CheckpointTensors& tensors,
                            uint32_t keep_last);

// The newest complete checkpoint in dir, or "" when there is none. Ignores temporary files.
std::string latest_checkpoint(const std::string& dir);

// Loads into the given buffers. Every tensor asked for must exist with the same shape, else an
// Error names the file, the tensor and both shapes. Empty adam_m/adam_v groups are not read.
TrainingState load_checkpoint(const std::string& path, const CheckpointTensors& tensors);

// Reads only the state (step, data position, config), e.g. to rebuild the model from its config.
TrainingState read_checkpoint_state(const std::string& path);

}  // namespace cadtrain::trainer
