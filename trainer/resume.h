// Choosing where a run starts and where it writes, so that a resumed run continues in the
// directory it was resumed from and never writes, prunes or continues another run's checkpoints.
//
//   find_resume_point   the checkpoint to resume from for a user's path, verified; with
//                       fallback, a corrupt newest checkpoint is skipped (and reported)
//   run_dir_of          the run directory a resume path lies in, to continue there
//   plan_run_start      under the run's lock: fresh start, continue in place, or start a new run
//                       from another run's checkpoint; refuses every case that would mix runs
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"
#include "trainer/checkpoint.h"

namespace cadtrain::trainer {

// The checkpoint directory of a run: checkpoint.dir, or <run dir>/checkpoints.
std::string checkpoint_dir(const config::RunConfig& cfg);

struct ResumePoint {
  std::string path;                 // checkpoint file to load
  TrainingState state;              // its metadata, checksum verified
  std::vector<std::string> notes;   // what was skipped and why (fallback), for the user
};

// path: a checkpoint file, a run directory or a checkpoints directory. A checkpoint whose
// metadata or tensors fail verification is an error naming it; with fallback the next older
// valid checkpoint of the same directory is used instead and a note says which were skipped.
ResumePoint find_resume_point(const std::string& path, bool fallback);

// The run directory of a resume path: the path itself when it holds checkpoints/, the parent of
// a "checkpoints" directory, or of the "checkpoints" directory holding a checkpoint file; "" for
// anything else (a checkpoint.dir elsewhere), where the config decides.
std::string run_dir_of(const std::string& resume_path);

// The overrides that make a resumed run's saved config continue in the run directory of
// resume_path (output_dir and name set from run_dir_of, checkpoint.dir cleared), followed by the
// user's own, which win.
std::vector<std::string> resume_overrides(const std::string& resume_path, const std::vector<std::string>& user_sets);

enum class StartKind { kFresh, kContinue, kNewRunFromCheckpoint };
struct RunStart {
  StartKind kind = StartKind::kFresh;
  uint64_t run_id = 0;  // the run's id, to store in its checkpoints
  std::vector<std::string> notes;
};

// Decides how a run writing checkpoints to ckpt_dir starts; call while holding the run's lock.
// resume_checkpoint "" = fresh start (refused when ckpt_dir already holds checkpoints); a
// checkpoint inside ckpt_dir continues that run (refused when the directory holds checkpoints of
// another run or valid checkpoints newer than it; corrupt newer ones are renamed *.corrupt);
// one elsewhere starts a new run from it (refused when ckpt_dir holds checkpoints).
RunStart plan_run_start(const std::string& ckpt_dir, const std::string& resume_checkpoint,
                        const TrainingState* resumed);

}  // namespace cadtrain::trainer
