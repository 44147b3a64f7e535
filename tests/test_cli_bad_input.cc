// The `cadtrain` binary against hostile command lines and files: every case must end with exit
// status 1 and a message naming what is wrong (never 2 from an uncaught exception, never a hang,
// never a false success). Each test is a reproducer of a case an earlier build got wrong.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "data/dataset.h"
#include "test_util.h"

namespace fs = std::filesystem;
using cadtrain::test::read_file;
using cadtrain::test::write_file;

namespace {

struct Outcome {
  int status = -1;       // exit status, -1 when killed by a signal or timed out
  bool timed_out = false;
  std::string out, err;
};

// Runs build/cadtrain with args (stdout/stderr to files under dir), killing it after timeout.
// while_running(pid, stdout_path) is polled until it returns true, e.g. to send a signal.
Outcome cadtrain_cli(const fs::path& dir, const std::vector<std::string>& args, double timeout_s = 120,
                     const std::function<bool(pid_t, const fs::path&)>& while_running = {}) {
  static int calls = 0;
  const fs::path out = dir / fmt::format("cli_{}.out", calls), err = dir / fmt::format("cli_{}.err", calls);
  ++calls;
  // CADTRAIN_CLI runs the tests against another binary (e.g. an older build, to see them fail).
  const char* other = std::getenv("CADTRAIN_CLI");
  const std::string binary = other != nullptr ? other : std::string(CADTRAIN_BINARY_DIR) + "/cadtrain";
  std::vector<char*> argv = {const_cast<char*>(binary.c_str())};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t child = ::fork();
  if (child == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  Outcome r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  bool done_hook = !while_running;
  int status = 0;
  while (::waitpid(child, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
      break;
    }
    if (!done_hook) done_hook = while_running(child, out);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!r.timed_out && WIFEXITED(status)) r.status = WEXITSTATUS(status);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::string read_if_exists(const fs::path& path) { return fs::exists(path) ? read_file(path) : std::string(); }

// Step lines of a run of 100000 steps printed so far ("step      3/100000 | loss ...").
int steps_printed(const std::string& out) {
  int n = 0;
  for (size_t at = out.find("/100000 | loss"); at != std::string::npos; at = out.find("/100000 | loss", at + 1)) ++n;
  return n;
}

// Exit status 1 with every part in stderr.
::testing::AssertionResult named_error(const Outcome& r, std::initializer_list<std::string> parts) {
  if (r.timed_out) return ::testing::AssertionFailure() << "timed out (a hang)";
  if (r.status != 1) return ::testing::AssertionFailure() << "exit status " << r.status << ", stderr: " << r.err;
  for (const std::string& part : parts) {
    if (!contains(r.err, part)) return ::testing::AssertionFailure() << "stderr lacks \"" << part << "\": " << r.err;
  }
  return ::testing::AssertionSuccess();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = dir_ / "tiny.pbtxt";
    write_file(config_, fmt::format(R"(output_dir: "{0}/runs"
model {{ d_model: 16 n_layers: 1 n_heads: 2 max_seq_len: 256 }}
data {{ train_path: "{0}/train.h5" eval_path: "{0}/eval.h5" tokens_per_micro_batch: 128 grad_accumulation: 1
       synth {{ n_docs: 40 mean_doc_tokens: 48 min_doc_tokens: 16 max_doc_tokens: 200 }} }}
schedule {{ total_steps: 4 warmup_steps: 1 eval_every: 0 eval_batches: 1 }}
checkpoint {{ every_steps: 2 keep_last: 5 }}
parallel {{ threads: 1 }}
)",
                                    dir_.path().string()));
  }
  Outcome cli(const std::vector<std::string>& args, double timeout_s = 120,
              const std::function<bool(pid_t, const fs::path&)>& while_running = {}) {
    return cadtrain_cli(dir_.path(), args, timeout_s, while_running);
  }
  // Trains runs/<name> for 4 steps (checkpoints at 2 and 4).
  void train(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"train", "--config", config_, "--set", "name=" + name};
    args.insert(args.end(), extra.begin(), extra.end());
    const Outcome r = cli(args);
    ASSERT_EQ(r.status, 0) << r.err;
  }
  std::string run(const std::string& name) const { return dir_ / ("runs/" + name); }
  std::string ckpt(const std::string& name, int step) const {
    return run(name) + fmt::format("/checkpoints/step_{:08d}.h5", step);
  }

  cadtrain::test::TempDir dir_;
  std::string config_;
};

TEST_F(CliTest, ConfigThatIsNotARegularFileIsRefused) {
  fs::create_directories(dir_ / "a_dir");
  ASSERT_EQ(::mkfifo((dir_ / "fifo").c_str(), 0644), 0);
  EXPECT_TRUE(named_error(cli({"config", "check", "--config", dir_ / "a_dir"}, 30),
                          {"config file " + dir_ / "a_dir" + " is a directory"}));
  EXPECT_TRUE(named_error(cli({"config", "check", "--config", dir_ / "fifo"}, 30),
                          {"config file " + dir_ / "fifo" + " is not a regular file"}));
  EXPECT_TRUE(named_error(cli({"config", "check", "--config", "/dev/zero"}, 30),
                          {"config file /dev/zero is not a regular file"}));
}

TEST_F(CliTest, OneSetSetsExactlyOneField) {
  EXPECT_TRUE(named_error(cli({"config", "check", "--set", "model.n_layers=3 n_heads: 8"}, 30),
                          {"--set model.n_layers=3 n_heads: 8", "one --set sets one field"}));
}

TEST_F(CliTest, MetricsFileOutsideTheRunDirectoryIsRefused) {
  EXPECT_TRUE(named_error(cli({"config", "check", "--set", "logging.metrics_file=../../x"}, 30),
                          {"logging.metrics_file \"../../x\" must be a file name inside the run directory"}));
}

TEST_F(CliTest, DataBuildRefusesToOverwriteItsInput) {
  write_file(dir_ / "f.txt", "some text\n");
  EXPECT_TRUE(named_error(cli({"data", "build", dir_ / "f.txt", "-o", dir_ / "f.txt"}, 30),
                          {dir_ / "f.txt" + ": is an input and also a file this import writes"}));
  EXPECT_EQ(read_file(dir_ / "f.txt"), "some text\n");
}

TEST_F(CliTest, FifoAsDatasetIsRefusedWithoutHanging) {
  ASSERT_EQ(::mkfifo((dir_ / "fifo.h5").c_str(), 0644), 0);
  EXPECT_TRUE(named_error(cli({"data", "inspect", dir_ / "fifo.h5"}, 30), {"not a regular file"}));
  write_file(dir_ / "in.txt", "text\n");
  ASSERT_EQ(::mkfifo((dir_ / "fifo.txt").c_str(), 0644), 0);
  EXPECT_TRUE(named_error(cli({"data", "build", dir_ / "fifo.txt", "-o", dir_ / "out.h5"}, 30),
                          {dir_ / "fifo.txt" + ": not a regular file"}));
}

TEST_F(CliTest, SampleRejectsBadOptionsAndOverlongPrompts) {
  train("tiny");
  const std::string r = run("tiny");
  EXPECT_TRUE(named_error(cli({"sample", r, "-p", "Hi", "-n", "4000000000"}, 60),
                          {"exceeds the model's max_seq_len 256"}));
  EXPECT_TRUE(named_error(cli({"sample", r, "-p", "Hi", "--temperature", "nan"}, 60),
                          {"temperature nan must be a finite number >= 0"}));
  EXPECT_TRUE(named_error(cli({"sample", r, "-p", "Hi", "--temperature", "-1"}, 60),
                          {"temperature -1 must be a finite number >= 0"}));
  EXPECT_TRUE(named_error(cli({"sample", r, "-p", std::string(300, 'a'), "-n", "1"}, 60),
                          {"prompt of 300 tokens + 1 new tokens exceeds the model's max_seq_len 256"}));
  EXPECT_TRUE(named_error(cli({"sample", r, "-p", std::string(100000, 'a')}, 60), {"prompt of 100000 tokens"}));
  const Outcome ok = cli({"sample", r, "-p", "Hi", "-n", "5"}, 60);
  EXPECT_EQ(ok.status, 0) << ok.err;
}

TEST_F(CliTest, EvalThatScoresNothingIsAnError) {
  train("tiny");
  EXPECT_TRUE(named_error(cli({"eval", run("tiny"), "--batches", "0"}, 60), {"--batches 0 scores nothing"}));
  {
    cadtrain::data::DatasetWriterOptions options;
    options.vocab_size = 256;
    cadtrain::data::DatasetWriter empty(dir_ / "empty.h5", options);
    empty.finish();
    cadtrain::data::DatasetWriter ones(dir_ / "ones.h5", options);
    for (uint32_t t = 0; t < 50; ++t) ones.add_document(std::vector<uint32_t>{65 + t % 20});
    ones.finish();
  }
  EXPECT_TRUE(named_error(cli({"eval", run("tiny"), "--data", dir_ / "empty.h5"}, 60),
                          {dir_ / "empty.h5" + ": no token to score (0 documents, 0 tokens"}));
  EXPECT_TRUE(named_error(cli({"eval", run("tiny"), "--data", dir_ / "ones.h5"}, 60),
                          {dir_ / "ones.h5" + ": no token to score (50 documents, 50 tokens"}));
  const Outcome ok = cli({"eval", run("tiny")}, 60);
  EXPECT_EQ(ok.status, 0) << ok.err;
}

TEST_F(CliTest, ResumeContinuesInTheResumedDirectoryAndRefusesFinishedRuns) {
  train("ref");
  const std::string ref_step4 = read_file(ckpt("ref", 4));
  fs::create_directories(run("c6"));
  fs::copy(run("ref") + "/checkpoints", run("c6") + "/checkpoints");
  const Outcome r = cli({"train", "--resume", run("c6"), "--set", "schedule.total_steps=6"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::exists(ckpt("c6", 6)));
  EXPECT_FALSE(fs::exists(ckpt("ref", 6)));
  EXPECT_EQ(read_file(ckpt("ref", 4)), ref_step4);
  EXPECT_TRUE(fs::exists(ckpt("ref", 2)));

  EXPECT_TRUE(named_error(cli({"train", "--resume", run("c6"), "--set", "schedule.total_steps=3"}),
                          {"is at step 6 and schedule.total_steps is 3: nothing left to train"}));
}

TEST_F(CliTest, SecondTrainOnTheSameRunIsRefused) {
  // The first run is stopped by a signal once it is training: meanwhile a second one must refuse.
  Outcome second;
  const Outcome first = cli({"train", "--config", config_, "--set", "name=conc", "--set", "schedule.total_steps=100000"},
                            120, [&](pid_t pid, const fs::path& out) {
                              if (steps_printed(read_if_exists(out)) < 1) return false;
                              second = cli({"train", "--config", config_, "--set", "name=conc"}, 60);
                              ::kill(pid, SIGINT);
                              return true;
                            });
  EXPECT_TRUE(named_error(second, {"run directory " + run("conc") + " is in use by another cadtrain train"}));
  EXPECT_TRUE(named_error(first, {"stopped by SIGINT"}));
}

TEST_F(CliTest, SigtermStopsCleanlyWithAResumableCheckpoint) {
  const Outcome r = cli({"train", "--config", config_, "--set", "name=sig", "--set", "schedule.total_steps=100000",
                         "--set", "checkpoint.every_steps=0"},
                        120, [](pid_t pid, const fs::path& out) {
                          if (steps_printed(read_if_exists(out)) < 3) return false;
                          ::kill(pid, SIGTERM);
                          return true;
                        });
  EXPECT_TRUE(named_error(r, {"stopped by SIGTERM after step", "continue with: cadtrain train --resume"}));
  for (const auto& e : fs::recursive_directory_iterator(run("sig"))) {
    EXPECT_FALSE(e.path().string().ends_with(".tmp")) << e.path();
  }
  // "stopped by SIGTERM after step N of 100000": one more step from there.
  const size_t at = r.err.find("after step ");
  ASSERT_NE(at, std::string::npos) << r.err;
  const uint64_t stopped = std::stoull(r.err.substr(at + 11));
  EXPECT_GE(stopped, 3u);
  const Outcome resumed =
      cli({"train", "--resume", run("sig"), "--set", "schedule.total_steps=" + std::to_string(stopped + 1)});
  EXPECT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_TRUE(contains(resumed.out, "resumed from")) << resumed.out;
}

TEST_F(CliTest, CorruptNewestCheckpointIsReportedAndFallbackIsExplicit) {
  train("tiny");
  std::string bytes = read_file(ckpt("tiny", 4));
  const auto at = bytes.find("lr: 0.003");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 8] = '9';
  write_file(ckpt("tiny", 4), bytes);
  EXPECT_TRUE(named_error(cli({"train", "--resume", run("tiny"), "--set", "schedule.total_steps=6"}),
                          {ckpt("tiny", 4) + ": metadata checksum mismatch", "--fallback"}));
  const Outcome r = cli({"train", "--resume", run("tiny"), "--fallback", "--set", "schedule.total_steps=6"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "skipping corrupt checkpoint " + ckpt("tiny", 4))) << r.out;
  EXPECT_TRUE(contains(r.out, "falling back to " + ckpt("tiny", 2))) << r.out;
  EXPECT_TRUE(fs::exists(ckpt("tiny", 4) + ".corrupt"));
}

TEST_F(CliTest, RunAndCheckpointDirectoryPlacement) {
  write_file(run("blocked"), "a file where the run directory should be");
  EXPECT_TRUE(named_error(cli({"train", "--config", config_, "--set", "name=blocked"}),
                          {"run directory " + run("blocked") + " exists and is not a directory"}));
  train("elsewhere", {"--set", "checkpoint.dir=" + dir_ / "ck"});
  EXPECT_TRUE(fs::exists(dir_ / "ck/step_00000004.h5"));
  EXPECT_TRUE(fs::exists(run("elsewhere") + "/metrics.jsonl"));
}

}  // namespace
