// Checkpoints: one HDF5 file per saved step holding parameters, optimizer moments, the step,
// the data position and the config text. Written atomically (temporary file, fsync,
// rename, fsync of the directory), so a process killed while writing leaves the previous
// checkpoint intact; the newest keep_last are kept.
//
// File: <dir>/step_<00000123>.h5 with groups /params, /adam_m, /adam_v (one float32 dataset per
// tensor, named as the model names it, with its shape), attributes step, format_version,
// data_epoch, data_doc_cursor, data_batch_in_window, data_micro_batches, run_id (uint64),
// metadata_crc64 (uint64: CRC-64 of the attributes above and the config text, which HDF5 stores
// without a checksum of its own), and a uint8 dataset /config (the effective config, text format,
// as bytes). Versions 1 (no run_id, no metadata checksum) and 2 stored /config as a
// variable-length string; both are still read. Training
// draws no random numbers (data order is a function of (seed, epoch)), so no RNG state is saved;
// an rng_state attribute of older files is ignored.
#pragma once

#include <cstdint>
#include <memory>
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
  // Identifies the run a checkpoint belongs to (random at a fresh start, kept on resume), so that
  // pruning and resuming never take another run's checkpoint for this one's. 0: unknown.
  uint64_t run_id = 0;
};

// The tensors of one checkpoint, by group.
struct CheckpointTensors {
  std::vector<TensorRef> params;
  std::vector<TensorRef> adam_m;  // may be empty (weights-only checkpoint)
  std::vector<TensorRef> adam_v;
};

// Saves, prunes old checkpoints beyond keep_last, and returns the new file's path. Pruning counts
// and deletes only checkpoints of state.run_id (0 matches any run), never another run's.
std::string save_checkpoint(const std::string& dir, const TrainingState& state, const CheckpointTensors& tensors,
                            uint32_t keep_last);

// The newest complete checkpoint in dir, or "" when there is none. Ignores temporary files.
std::string latest_checkpoint(const std::string& dir);

// Loads into the given buffers. Every tensor asked for must exist with the same shape, else an
// Error names the file, the tensor and both shapes. Empty adam_m/adam_v groups are not read.
TrainingState load_checkpoint(const std::string& path, const CheckpointTensors& tensors);

// Reads only the state (step, data position, config), e.g. to rebuild the model from its config.
// Verifies the metadata checksum.
TrainingState read_checkpoint_state(const std::string& path);

// The parameter group's name, for the streaming reader and writer below.
inline constexpr const char* kParamsGroup = "params";

// One tensor at a time from a checkpoint file, for tools that must not hold a whole model (merge).
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);  // throws naming the path
  ~CheckpointReader();
  CheckpointReader(CheckpointReader&&) noexcept;
  const std::string& path() const;
  const TrainingState& state() const;
  // The tensors of a group in the file's (name) order; empty when the group is absent.
  std::vector<std::string> tensor_names(const char* group) const;
  // The stored shape of group/name; throws naming the file and tensor when it is missing.
  std::vector<int64_t> shape(const char* group, const std::string& name) const;
  // Reads group/tensor.name into tensor.data; the stored shape must equal tensor.shape.
  void read(const char* group, const TensorRef& tensor) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes a checkpoint file one tensor at a time to "<path>.tmp" and publishes it at path on
// commit() (fsync, rename, fsync of the directory), like save_checkpoint; destroyed without
// commit(), it removes the temporary file, so a failed tool never leaves a partial checkpoint.
class CheckpointWriter {
 public:
  CheckpointWriter(const std::string& path, const TrainingState& state);
  ~CheckpointWriter();
  // Groups are created on first use; a tensor name may appear once per group.
  void write(const char* group, const TensorRef& tensor);
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads the state and every tensor of every group, checking checksums, dtypes and that each
// tensor's data is really stored in the file (before allocating anything for it). Throws an
// Error naming the file and the first problem; returns the state.
TrainingState verify_checkpoint(const std::string& path);

// The checkpoints (step_*.h5) in dir, newest step first; empty when dir does not exist.
std::vector<std::string> list_checkpoint_files(const std::string& dir);

}  // namespace cadtrain::trainer
