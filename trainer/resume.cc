// Where a run starts and writes (see resume.h).
#include "trainer/resume.h"

#include <fmt/format.h>

#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "common/error.h"
#include "configs/config.h"

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;

bool same_directory(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  const bool same = fs::equivalent(a, b, ec);
  return !ec && same;
}

uint64_t new_run_id() {
  std::random_device device;
  uint64_t id = 0;
  while (id == 0) id = (uint64_t{device()} << 32) ^ device();
  return id;
}

// The directory of checkpoints a resume path names, and the file it names when it is one.
std::pair<fs::path, std::string> checkpoint_source(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) fail("{}: no such file or directory to resume from", path);
  if (ec) fail("{}: cannot access: {}", path, ec.message());
  if (fs::is_regular_file(status)) {
    const fs::path parent = fs::path(path).parent_path();
    return {parent.empty() ? fs::path(".") : parent, path};
  }
  if (!fs::is_directory(status)) fail("{}: not a checkpoint file or a directory", path);
  if (fs::is_directory(fs::path(path) / "checkpoints", ec)) return {fs::path(path) / "checkpoints", ""};
  return {fs::path(path), ""};
}

}  // namespace

std::string checkpoint_dir(const config::RunConfig& cfg) {
  return cfg.checkpoint().dir().empty() ? config::run_dir(cfg) + "/checkpoints" : cfg.checkpoint().dir();
}

ResumePoint find_resume_point(const std::string& path, bool fallback) {
  const auto [dir, file] = checkpoint_source(path);
  ResumePoint point;
  if (!file.empty()) {
    // An explicitly named file is used or refused, never swapped for another one.
    point.path = file;
    point.state = fallback ? verify_checkpoint(file) : read_checkpoint_state(file);
    return point;
  }
  const std::vector<std::string> candidates = list_checkpoint_files(dir.string());
  if (candidates.empty()) {
    fail("{}: no checkpoint there (expected a step_*.h5 file, a run directory or its checkpoints/)", path);
  }
  if (!fallback) {
    try {
      point.path = candidates.front();
      point.state = read_checkpoint_state(point.path);
      return point;
    } catch (const Error& e) {
      fail("{}\nthe newest checkpoint is corrupt; --fallback resumes from the newest valid one before it",
           e.what());
    }
  }
  for (const std::string& candidate : candidates) {
    try {
      point.state = verify_checkpoint(candidate);
      point.path = candidate;
      if (!point.notes.empty()) point.notes.push_back(fmt::format("falling back to {}", candidate));
      return point;
    } catch (const Error& e) {
      point.notes.push_back(fmt::format("skipping corrupt checkpoint {}", e.what()));
    }
  }
  fail("{}: no valid checkpoint there; every one is corrupt:\n  {}", path, fmt::join(point.notes, "\n  "));
}

std::string run_dir_of(const std::string& resume_path) {
  std::error_code ec;
  const fs::path p = fs::absolute(resume_path, ec).lexically_normal();
  if (ec) return "";
  const fs::path dir = fs::is_regular_file(p, ec) ? p.parent_path() : p;
  const fs::path trimmed = dir.filename().empty() ? dir.parent_path() : dir;  // "a/b/" -> "a/b"
  if (fs::is_directory(trimmed / "checkpoints", ec)) return trimmed.string();
  if (trimmed.filename() == "checkpoints") return trimmed.parent_path().string();
  return "";
}

std::vector<std::string> resume_overrides(const std::string& resume_path, const std::vector<std::string>& user_sets) {
  std::vector<std::string> sets;
  if (const std::string run = run_dir_of(resume_path); !run.empty()) {
    const fs::path dir(run);
    sets = {"output_dir=" + dir.parent_path().string(), "name=" + dir.filename().string(), "checkpoint.dir="};
  }
  sets.insert(sets.end(), user_sets.begin(), user_sets.end());
  return sets;
}

RunStart plan_run_start(const std::string& ckpt_dir, const std::string& resume_checkpoint,
                        const TrainingState* resumed) {
  RunStart start;
  const std::vector<std::string> existing = list_checkpoint_files(ckpt_dir);
  if (resume_checkpoint.empty()) {
    if (!existing.empty()) {
      fail("{} already holds {} checkpoint(s) of an earlier run (newest {}); continue it with --resume, or start "
           "over under another name (--set name=...) or after moving them away",
           ckpt_dir, existing.size(), existing.front());
    }
    start.run_id = new_run_id();
    return start;
  }
  const fs::path source = fs::path(resume_checkpoint).parent_path();
  if (!same_directory(source.empty() ? fs::path(".") : source, ckpt_dir)) {
    if (!existing.empty()) {
      fail("resuming {} would write its checkpoints into {}, which holds another run's checkpoints (newest {}); "
           "resume that directory itself, or choose another run name (--set name=...)",
           resume_checkpoint, ckpt_dir, existing.front());
    }
    start.kind = StartKind::kNewRunFromCheckpoint;
    start.run_id = new_run_id();
    start.notes.push_back(fmt::format("starting a new run in {} from {} (its own directory is left untouched)",
                                      ckpt_dir, resume_checkpoint));
    return start;
  }
  start.kind = StartKind::kContinue;
  start.run_id = resumed->run_id != 0 ? resumed->run_id : new_run_id();
  // existing is newest first: the files before the resumed one are newer than it.
  bool newer = true;
  for (const std::string& other : existing) {
    if (same_directory(other, resume_checkpoint)) {
      newer = false;
      continue;
    }
    TrainingState state;
    try {
      // Newer files are verified whole (one would be replaced); older ones only for their run.
      state = newer ? verify_checkpoint(other) : read_checkpoint_state(other);
    } catch (const Error&) {
      // A corrupt newer checkpoint would be overwritten by this run: keep its bytes under a name
      // that no resume or pruning picks up.
      if (newer) {
        const std::string aside = other + ".corrupt";
        std::error_code ec;
        fs::rename(other, aside, ec);
        if (ec) fail("cannot move corrupt checkpoint {} aside: {}", other, ec.message());
        start.notes.push_back(fmt::format("moved corrupt checkpoint {} to {}", other, aside));
      }
      continue;
    }
    if (state.run_id != 0 && resumed->run_id != 0 && state.run_id != resumed->run_id) {
      fail("{} holds checkpoints of two runs: {} (run {:016x}) and {} (run {:016x}); move the other run's "
           "checkpoints away before resuming",
           ckpt_dir, resume_checkpoint, resumed->run_id, other, state.run_id);
    }
    if (newer) {
      fail("resuming {} (step {}) in place would overwrite the newer checkpoint {} (step {}); resume the newest, or "
           "start a new run from it (--set name=...)",
           resume_checkpoint, resumed->step, other, state.step);
    }
  }
  return start;
}

}  // namespace cadtrain::trainer
