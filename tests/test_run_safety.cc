// Data safety of runs: the run-directory lock, where a resumed run writes, the metadata checksum
// of checkpoints with fallback to the previous valid one, and the run history (metrics.jsonl)
// after a resume. Each test reproduces a way an earlier build lost or mixed up a run's data.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hdf5.h>  // to find a tensor chunk to damage

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/error.h"
#include "configs/config.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/resume.h"
#include "trainer/run_lock.h"
#include "trainer/train_loop.h"

namespace fs = std::filesystem;
using namespace cadtrain;
using test::error_of;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class RunSafetyTest : public ::testing::Test {
 protected:
  // A model and corpus small enough for a second of training; runs go to <tmp>/<name>.
  config::RunConfig config(const std::string& name, const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> sets = {
        "name=" + name, "output_dir=" + dir_.path().string(), "model.d_model=16", "model.n_layers=1",
        "model.n_heads=2", "model.max_seq_len=256", "data.train_path=" + dir_ / "train.h5",
        "data.eval_path=" + dir_ / "eval.h5", "data.tokens_per_micro_batch=128", "data.grad_accumulation=1",
        "data.synth={ n_docs: 40 mean_doc_tokens: 48 min_doc_tokens: 16 max_doc_tokens: 200 }",
        "schedule.total_steps=6", "schedule.warmup_steps=1", "schedule.eval_every=0", "schedule.eval_batches=1",
        "checkpoint.every_steps=2", "checkpoint.keep_last=10", "parallel.threads=1"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return config::parse_run_config("", "test", sets);
  }
  fs::path run(const std::string& name) const { return dir_.path() / name; }
  fs::path ckpt(const std::string& name, int step) const {
    return run(name) / "checkpoints" / fmt::format("step_{:08d}.h5", step);
  }
  static std::vector<std::string> files_in(const fs::path& d) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(d)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  static std::vector<uint64_t> logged_steps(const fs::path& metrics) {
    std::vector<uint64_t> steps;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("eval")) steps.push_back(j["step"].get<uint64_t>());
    }
    return steps;
  }

  test::TempDir dir_;
};

// Replaces the first occurrence of `from` in the file's bytes by `to` (same length).
void patch_bytes(const fs::path& path, const std::string& from, const std::string& to) {
  std::string bytes = test::read_file(path);
  const auto at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << path;
  bytes.replace(at, from.size(), to);
  test::write_file(path, bytes);
}

TEST(RunLockTest, SecondHolderIsRefusedAndReleaseFreesIt) {
  test::TempDir dir;
  {
    const trainer::RunLock first(dir / "run", "run directory");
    const std::string message = error_of([&] { trainer::RunLock second(dir / "run", "run directory"); });
    EXPECT_TRUE(contains(message, "run directory " + dir / "run" + " is in use by another cadtrain train (pid " +
                                      std::to_string(::getpid()) + ")"))
        << message;
  }
  const trainer::RunLock again(dir / "run", "run directory");
}

TEST(RunLockTest, KilledHolderDoesNotLeaveTheDirectoryLocked) {
  test::TempDir dir;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    trainer::RunLock lock(dir / "run", "run directory");
    const char byte = 1;
    [[maybe_unused]] const ssize_t n = ::write(ready[1], &byte, 1);
    ::pause();
    ::_exit(0);
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  EXPECT_FALSE(error_of([&] { trainer::RunLock busy(dir / "run", "run directory"); }).empty());
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  const trainer::RunLock after(dir / "run", "run directory");  // kill -9 released it
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_F(RunSafetyTest, SecondTrainOnALockedRunIsRefused) {
  const trainer::RunLock held(run("conc").string(), "run directory");
  const std::string message = error_of([&] { trainer::train(config("conc"), "test", ""); });
  EXPECT_TRUE(contains(message, "is in use by another cadtrain train")) << message;
  EXPECT_FALSE(fs::exists(run("conc") / "metrics.jsonl"));
}

TEST_F(RunSafetyTest, ResumeContinuesInTheDirectoryResumedFrom) {
  // The reproducer: copy a run's checkpoints into a new run directory and resume that directory
  // with the saved config; the earlier build wrote into (and pruned) the original run.
  trainer::train(config("ref", {"checkpoint.keep_last=2"}), "test", "");
  const std::vector<std::string> ref_before = files_in(run("ref") / "checkpoints");
  fs::create_directories(run("c6"));
  fs::copy(run("ref") / "checkpoints", run("c6") / "checkpoints");
  fs::remove(run("c6") / "checkpoints" / "train.lock");

  const trainer::ResumePoint point = trainer::find_resume_point(run("c6").string(), false);
  EXPECT_EQ(point.path, ckpt("c6", 6).string());
  const config::RunConfig cfg = config::parse_run_config(
      point.state.config_text, "saved", trainer::resume_overrides(run("c6").string(), {"schedule.total_steps=8"}));
  const trainer::TrainResult r = trainer::train(cfg, "test", point.path);
  EXPECT_EQ(r.checkpoint, ckpt("c6", 8).string());
  EXPECT_TRUE(fs::exists(ckpt("c6", 8)));
  EXPECT_EQ(files_in(run("ref") / "checkpoints"), ref_before);
  EXPECT_EQ(logged_steps(run("c6") / "metrics.jsonl"), (std::vector<uint64_t>{7, 8}));
}

TEST_F(RunSafetyTest, ResumeFromAnotherRunsCheckpointStartsANewRunOrRefuses) {
  trainer::train(config("a"), "test", "");
  // Into an empty run: a new run starts from the checkpoint; a's directory is untouched.
  const std::vector<std::string> a_before = files_in(run("a") / "checkpoints");
  trainer::train(config("b", {"schedule.total_steps=8"}), "test", ckpt("a", 4).string());
  EXPECT_EQ(files_in(run("a") / "checkpoints"), a_before);
  EXPECT_TRUE(fs::exists(ckpt("b", 8)));
  // Into a run that has checkpoints of its own: refused, naming both.
  const std::string message =
      error_of([&] { trainer::train(config("b", {"schedule.total_steps=9"}), "test", ckpt("a", 6).string()); });
  EXPECT_TRUE(contains(message, ckpt("a", 6).string()) && contains(message, ckpt("b", 8).string())) << message;
}

TEST_F(RunSafetyTest, NewestCheckpointOfAnotherRunIsRefused) {
  trainer::train(config("a"), "test", "");
  trainer::train(config("b"), "test", "");
  fs::copy_file(ckpt("b", 6), ckpt("a", 7));  // another run's checkpoint is now the newest in a
  const trainer::ResumePoint point = trainer::find_resume_point(run("a").string(), false);
  const std::string message =
      error_of([&] { trainer::train(config("a", {"schedule.total_steps=9"}), "test", point.path); });
  EXPECT_TRUE(contains(message, "holds checkpoints of two runs")) << message;
  EXPECT_FALSE(fs::exists(ckpt("a", 8)));
}

TEST(CheckpointOwnershipTest, PruningKeepsAnotherRunsCheckpoints) {
  test::TempDir dir;
  std::vector<float> w(4, 1.0f);
  trainer::CheckpointTensors tensors;
  tensors.params.push_back({"w", {4}, w.data()});
  trainer::TrainingState state;
  const auto save = [&](uint64_t step, uint64_t run_id) {
    state.step = step;
    state.run_id = run_id;
    trainer::save_checkpoint(dir / "ckpt", state, tensors, 2);
  };
  save(1, 7);
  save(2, 9);  // another run's checkpoint in the same directory
  for (uint64_t step = 3; step <= 5; ++step) save(step, 7);
  const auto left = trainer::list_checkpoint_files(dir / "ckpt");
  EXPECT_EQ(left, (std::vector<std::string>{dir / "ckpt/step_00000005.h5", dir / "ckpt/step_00000004.h5",
                                            dir / "ckpt/step_00000002.h5"}));
  EXPECT_EQ(trainer::read_checkpoint_state(dir / "ckpt/step_00000002.h5").run_id, 9u);
}

TEST_F(RunSafetyTest, FreshStartOverExistingCheckpointsIsRefused) {
  trainer::train(config("a"), "test", "");
  const std::string before = test::read_file(ckpt("a", 6));
  const std::string message = error_of([&] { trainer::train(config("a"), "test", ""); });
  EXPECT_TRUE(contains(message, "already holds 3 checkpoint(s)")) << message;
  EXPECT_EQ(test::read_file(ckpt("a", 6)), before);
}

TEST_F(RunSafetyTest, ResumingAFinishedRunWithFewerStepsIsRefused) {
  trainer::train(config("a"), "test", "");
  const std::string before = test::read_file(ckpt("a", 6));
  const std::string message =
      error_of([&] { trainer::train(config("a", {"schedule.total_steps=4"}), "test", run("a").string()); });
  EXPECT_TRUE(contains(message, "is at step 6 and schedule.total_steps is 4: nothing left to train")) << message;
  EXPECT_EQ(test::read_file(ckpt("a", 6)), before);
}

TEST_F(RunSafetyTest, MetricsDoNotRepeatStepsAfterAResume) {
  // A run killed after step 6 whose newest surviving checkpoint is step 4: steps 5 and 6 run
  // again, and metrics.jsonl must list each step once.
  trainer::train(config("a"), "test", "");
  fs::remove(ckpt("a", 6));
  std::ofstream(run("a") / "metrics.jsonl", std::ios::app) << "{\"step\": 7, \"loss\"";  // torn last line
  trainer::train(config("a", {"schedule.total_steps=8"}), "test", run("a").string());
  EXPECT_EQ(logged_steps(run("a") / "metrics.jsonl"), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST_F(RunSafetyTest, AlteredSavedConfigIsDetectedAndFallbackSaysSo) {
  trainer::train(config("a"), "test", "");
  patch_bytes(ckpt("a", 6), "lr: 0.003", "lr: 0.009");
  const std::string state_error = error_of([&] { trainer::read_checkpoint_state(ckpt("a", 6).string()); });
  EXPECT_TRUE(contains(state_error, ckpt("a", 6).string() + ": metadata checksum mismatch")) << state_error;

  const std::string resume_error = error_of([&] { trainer::find_resume_point(run("a").string(), false); });
  EXPECT_TRUE(contains(resume_error, "--fallback")) << resume_error;

  const trainer::ResumePoint point = trainer::find_resume_point(run("a").string(), true);
  EXPECT_EQ(point.path, ckpt("a", 4).string());
  ASSERT_EQ(point.notes.size(), 2u);
  EXPECT_TRUE(contains(point.notes[0], "skipping corrupt checkpoint " + ckpt("a", 6).string())) << point.notes[0];
  EXPECT_TRUE(contains(point.notes[1], "falling back to " + ckpt("a", 4).string())) << point.notes[1];

  // Continuing keeps the corrupt file's bytes aside instead of overwriting them.
  trainer::train(config("a", {"schedule.total_steps=8"}), "test", point.path);
  EXPECT_TRUE(fs::exists(ckpt("a", 6).string() + ".corrupt"));
  EXPECT_NO_THROW(trainer::verify_checkpoint(ckpt("a", 6).string()));  // rewritten by this run
}

TEST_F(RunSafetyTest, CorruptTensorsAreSkippedByFallback) {
  trainer::train(config("a"), "test", "");
  const std::string path = ckpt("a", 6).string();
  haddr_t address = 0;
  {
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    const hid_t tensor = H5Dopen2(file, "/params/tok_embedding", H5P_DEFAULT);
    hsize_t offset[2] = {0, 0};
    unsigned mask = 0;
    hsize_t size = 0;
    const hid_t space = H5Dget_space(tensor);
    ASSERT_GE(H5Dget_chunk_info(tensor, space, 0, offset, &mask, &address, &size), 0);
    H5Sclose(space);
    H5Dclose(tensor);
    H5Fclose(file);
  }
  std::string bytes = test::read_file(path);
  bytes[address + 100] ^= 0x40;  // one bit of the embedding's first chunk
  test::write_file(path, bytes);
  EXPECT_FALSE(error_of([&] { trainer::verify_checkpoint(path); }).empty());
  EXPECT_EQ(trainer::find_resume_point(run("a").string(), true).path, ckpt("a", 4).string());
}

TEST_F(RunSafetyTest, CheckpointDirElsewhereCreatesTheRunDirectory) {
  const trainer::TrainResult r = trainer::train(config("a", {"checkpoint.dir=" + dir_ / "elsewhere"}), "test", "");
  EXPECT_EQ(r.checkpoint, dir_ / "elsewhere/step_00000006.h5");
  EXPECT_TRUE(fs::exists(run("a") / "config.pbtxt"));
  EXPECT_TRUE(fs::exists(run("a") / "metrics.jsonl"));
}

TEST_F(RunSafetyTest, AFileWhereADirectoryShouldBeIsANamedError) {
  test::write_file(run("a"), "not a directory");
  std::string message = error_of([&] { trainer::train(config("a"), "test", ""); });
  EXPECT_TRUE(contains(message, "run directory " + run("a").string() + " exists and is not a directory")) << message;
  test::write_file(dir_ / "ckfile", "x");
  message = error_of([&] { trainer::train(config("b", {"checkpoint.dir=" + dir_ / "ckfile/sub"}), "test", ""); });
  EXPECT_TRUE(contains(message, dir_ / "ckfile" + " is a file, not a directory")) << message;
}

TEST(RunConfigSafetyTest, MetricsFileMustStayInsideTheRunDirectory) {
  for (const std::string bad : {"../../x", "/tmp/x.jsonl", "a/../../x"}) {
    const std::string message =
        error_of([&] { config::parse_run_config("", "test", {"logging.metrics_file=" + bad}); });
    EXPECT_TRUE(contains(message, "must be a file name inside the run directory")) << bad << ": " << message;
  }
  EXPECT_NO_THROW(config::parse_run_config("", "test", {"logging.metrics_file=logs.jsonl"}));
}

TEST(RunConfigSafetyTest, OneSetSetsOneField) {
  const std::string message =
      error_of([&] { config::parse_run_config("", "test", {"model.n_layers=3 n_heads: 8"}); });
  EXPECT_TRUE(contains(message, "one --set sets one field")) << message;
  const auto cfg = config::parse_run_config("", "test", {"model.layer_kinds=[ATTENTION, SHORT_CONV]", "model.n_layers=2"});
  EXPECT_EQ(cfg.model().layer_kinds_size(), 2);
}

}  // namespace
