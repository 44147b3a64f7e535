// Tests of checkpoints: bit-exact round trips, pruning, choosing the latest, validation errors,
// damaged files, and a writer killed mid-write (in a forked child) leaving the previous one intact.
#include <gtest/gtest.h>
#include <signal.h>    // kill, SIGKILL
#include <sys/wait.h>  // waitpid
#include <unistd.h>    // fork, _exit, getpid

#include <hdf5.h>  // HDF5 C API, to craft a file from a future format version

#include <algorithm>   // std::search
#include <bit>         // std::bit_cast
#include <chrono>      // polling for the child's temporary file
#include <cstdint>     // bit patterns
#include <cstdio>      // fprintf from the child
#include <cstring>     // std::memcmp
#include <exception>   // the child's error
#include <filesystem>  // temp directories, truncation
#include <fstream>     // raw bytes, to damage a file
#include <iterator>    // std::size, std::distance
#include <string>      // paths and messages
#include <thread>      // std::this_thread::sleep_for
#include <vector>      // tensors

#include "common/error.h"        // cadtrain::Error
#include "common/rng.h"          // random bit patterns
#include "test_util.h"
#include "trainer/checkpoint.h"  // the code under test

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;

// The kill test's checkpoint: large enough that writing it takes a while, smaller under ASan,
// whose shadow memory makes a 200 MB buffer needlessly slow.
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kLargeFloats = size_t{16} << 20;  // 64 MB
#else
constexpr size_t kLargeFloats = size_t{50} << 20;  // 200 MB
#endif

size_t element_count(const TensorRef& t) {
  size_t n = 1;
  for (const int64_t d : t.shape) n *= static_cast<size_t>(d);
  return n;
}

// Host tensors and the references to them that the checkpoint code takes. The references point
// into the inner vectors' heap buffers, which moving the outer vector does not relocate.
struct Tensors {
  std::vector<std::vector<float>> storage;
  CheckpointTensors refs;

  void add(std::vector<TensorRef>* group, const std::string& name, std::vector<int64_t> shape,
           uint64_t seed) {
    Rng rng(seed);
    std::vector<float> values(element_count(TensorRef{name, shape, nullptr}));
    // Random bit patterns: every kind of NaN, infinities, denormals and -0.0 turn up.
    for (float& v : values) v = std::bit_cast<float>(static_cast<uint32_t>(rng.next_u64()));
    storage.push_back(std::move(values));
    group->push_back(TensorRef{name, std::move(shape), storage.back().data()});
  }

  // Zeroed buffers of the same names and shapes, to load into.
  Tensors empty_like() const {
    Tensors out;
    auto copy = [&out](const std::vector<TensorRef>& from, std::vector<TensorRef>* to) {
      for (const TensorRef& t : from) {
        out.storage.emplace_back(element_count(t), 0.0f);
        to->push_back(TensorRef{t.name, t.shape, out.storage.back().data()});
      }
    };
    copy(refs.params, &out.refs.params);
    copy(refs.adam_m, &out.refs.adam_m);
    copy(refs.adam_v, &out.refs.adam_v);
    return out;
  }
};

Tensors small_model(uint64_t seed) {
  Tensors t;
  t.add(&t.refs.params, "embed.weight", {7, 5}, seed);
  t.add(&t.refs.params, "layers.0.attn.wq", {5, 5}, seed + 1);
  t.add(&t.refs.params, "layers.0.norm.scale", {5}, seed + 2);
  t.add(&t.refs.params, "scalar", {}, seed + 3);
  t.add(&t.refs.params, "empty", {0, 3}, seed + 4);
  t.add(&t.refs.adam_m, "embed.weight", {7, 5}, seed + 5);
  t.add(&t.refs.adam_m, "layers.0.attn.wq", {5, 5}, seed + 6);
  t.add(&t.refs.adam_v, "embed.weight", {7, 5}, seed + 7);
  t.add(&t.refs.adam_v, "layers.0.attn.wq", {5, 5}, seed + 8);
  return t;
}

TrainingState sample_state(uint64_t step) {
  TrainingState s;
  s.step = step;
  s.data_position = {3, 17, 42, 1000 + step};
  s.config_text = "run { name: \"tiny\" }\nmodel { layers: 2 }  # héllo\n";
  return s;
}

void expect_same_state(const TrainingState& a, const TrainingState& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.data_position.epoch, b.data_position.epoch);
  EXPECT_EQ(a.data_position.doc_cursor, b.data_position.doc_cursor);
  EXPECT_EQ(a.data_position.batch_in_window, b.data_position.batch_in_window);
  EXPECT_EQ(a.data_position.micro_batches, b.data_position.micro_batches);
  EXPECT_EQ(a.config_text, b.config_text);
}

void expect_same_bits(const std::vector<TensorRef>& a, const std::vector<TensorRef>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const size_t n = element_count(a[i]);
    EXPECT_TRUE(n == 0 || std::memcmp(a[i].data, b[i].data, n * sizeof(float)) == 0) << a[i].name;
  }
}

// Loads path into fresh buffers and checks every tensor and the state against the originals.
void expect_loads_as(const std::string& path, const Tensors& original, const TrainingState& state) {
  Tensors loaded = original.empty_like();
  expect_same_state(load_checkpoint(path, loaded.refs), state);
  expect_same_bits(original.refs.params, loaded.refs.params);
  expect_same_bits(original.refs.adam_m, loaded.refs.adam_m);
  expect_same_bits(original.refs.adam_v, loaded.refs.adam_v);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ =
        fs::temp_directory_path() / fmt::format("cadtrain_ckpt_{}_{}", ::getpid(), info->name());
    fs::remove_all(root_);
    dir_ = (root_ / "ckpt").string();
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string step_path(uint64_t step) const {
    return (fs::path(dir_) / fmt::format("step_{:08d}.h5", step)).string();
  }

  fs::path root_;
  std::string dir_;
};

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  Tensors model = small_model(1);
  // Values a careless conversion would change: NaN payloads (quiet and signalling), denormals,
  // negative zero, infinities.
  std::vector<float>& special = model.storage[0];
  const uint32_t bits[] = {0x7fc00001u, 0xffa00123u, 0x7f800001u, 0x00000001u, 0x807fffffu,
                           0x80000000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu};
  for (size_t i = 0; i < std::size(bits); ++i) special[i] = std::bit_cast<float>(bits[i]);
  // Several chunks, with partial ones at the edges.
  model.add(&model.refs.params, "big", {2100, 2001}, 99);
  const TrainingState state = sample_state(10);

  const std::string path = save_checkpoint(dir_, state, model.refs, 3);
  EXPECT_EQ(path, step_path(10));
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  expect_loads_as(path, model, state);
  expect_same_state(read_checkpoint_state(path), state);
}

TEST_F(CheckpointTest, WeightsOnlyCheckpoint) {
  Tensors model = small_model(2);
  model.refs.adam_m.clear();
  model.refs.adam_v.clear();
  const std::string path = save_checkpoint(dir_, sample_state(5), model.refs, 1);
  Tensors loaded = model.empty_like();
  load_checkpoint(path, loaded.refs);
  expect_same_bits(model.refs.params, loaded.refs.params);

  // Asking for moments the file does not have names the first one.
  Tensors with_moments = small_model(2).empty_like();
  const std::string message = test::error_of([&] { load_checkpoint(path, with_moments.refs); });
  EXPECT_NE(message.find("tensor adam_m/embed.weight is missing"), std::string::npos) << message;
}

TEST_F(CheckpointTest, KeepLastPrunesOldestButNeverTheNewFile) {
  const Tensors model = small_model(3);
  for (uint64_t step = 1; step <= 6; ++step) {
    save_checkpoint(dir_, sample_state(step), model.refs, 3);
  }
  for (uint64_t step = 1; step <= 6; ++step) {
    EXPECT_EQ(fs::exists(step_path(step)), step >= 4) << step;
  }

  // An older step saved after a restart is kept although three newer ones exist.
  save_checkpoint(dir_, sample_state(2), model.refs, 3);
  EXPECT_TRUE(fs::exists(step_path(2)));
  for (uint64_t step = 4; step <= 6; ++step) EXPECT_TRUE(fs::exists(step_path(step))) << step;
  EXPECT_EQ(latest_checkpoint(dir_), step_path(6));

  save_checkpoint(dir_, sample_state(7), model.refs, 1);
  EXPECT_EQ(latest_checkpoint(dir_), step_path(7));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointTest, LatestIgnoresTemporaryAndForeignFiles) {
  EXPECT_EQ(latest_checkpoint(dir_), "");  // no directory yet
  const Tensors model = small_model(4);
  save_checkpoint(dir_, sample_state(9), model.refs, 10);
  save_checkpoint(dir_, sample_state(10), model.refs, 10);
  std::ofstream(fs::path(dir_) / "step_00000100.h5.tmp") << "half written";
  std::ofstream(fs::path(dir_) / "step_abc.h5") << "not a checkpoint";
  std::ofstream(fs::path(dir_) / "notes.txt") << "hello";
  fs::create_directories(fs::path(dir_) / "step_00000200.h5");  // a directory, not a file
  EXPECT_EQ(latest_checkpoint(dir_), step_path(10));
  // Steps compare as numbers, not as text.
  save_checkpoint(dir_, sample_state(123456789), model.refs, 10);
  EXPECT_EQ(latest_checkpoint(dir_), (fs::path(dir_) / "step_123456789.h5").string());
  EXPECT_FALSE(fs::exists(fs::path(dir_) / "step_00000100.h5.tmp"));  // stale, so removed
}

TEST_F(CheckpointTest, ShapeMismatchNamesTensorAndBothShapes) {
  Tensors saved;
  saved.add(&saved.refs.params, "layers.0.attn.wq", {512, 256}, 5);
  const std::string path = save_checkpoint(dir_, sample_state(10), saved.refs, 3);
  Tensors model;
  model.add(&model.refs.params, "layers.0.attn.wq", {256, 256}, 6);
  EXPECT_EQ(
      test::error_of([&] { load_checkpoint(path, model.refs); }),
      fmt::format(
          "{}: tensor params/layers.0.attn.wq has shape [512, 256], the model expects [256, 256]",
          path));
}

TEST_F(CheckpointTest, MissingTensorIsNamed) {
  const Tensors saved = small_model(6);
  const std::string path = save_checkpoint(dir_, sample_state(1), saved.refs, 3);
  Tensors model = saved.empty_like();
  model.add(&model.refs.params, "lm_head.weight", {7, 5}, 1);
  const std::string message = test::error_of([&] { load_checkpoint(path, model.refs); });
  EXPECT_EQ(message, fmt::format("{}: tensor params/lm_head.weight is missing", path));
}

TEST_F(CheckpointTest, InvalidArgumentsAreErrors) {
  Tensors model = small_model(7);
  EXPECT_NE(
      test::error_of([&] { save_checkpoint(dir_, sample_state(1), model.refs, 0); }).find("keep_last"),
      std::string::npos);
  model.refs.params[0].name = "layers/0";
  EXPECT_NE(
      test::error_of([&] { save_checkpoint(dir_, sample_state(1), model.refs, 1); }).find("\"layers/0\""),
      std::string::npos);
  model.refs.params[0].name = "layers.0.attn.wq";  // now listed twice
  EXPECT_NE(
      test::error_of([&] { save_checkpoint(dir_, sample_state(1), model.refs, 1); }).find("listed twice"),
      std::string::npos);
  EXPECT_EQ(latest_checkpoint(dir_), "");
  EXPECT_NE(test::error_of([&] { read_checkpoint_state(step_path(1)); }).find("no such file"),
            std::string::npos);
}

TEST_F(CheckpointTest, FutureFormatVersionIsRefused) {
  const Tensors model = small_model(8);
  const std::string path = save_checkpoint(dir_, sample_state(1), model.refs, 1);
  {
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    const hid_t attr = H5Aopen(file, "format_version", H5P_DEFAULT);
    ASSERT_GE(attr, 0);
    const uint32_t version = 4;
    EXPECT_GE(H5Awrite(attr, H5T_NATIVE_UINT32, &version), 0);
    H5Aclose(attr);
    H5Fclose(file);
  }
  const std::string message = test::error_of([&] { read_checkpoint_state(path); });
  EXPECT_NE(message.find("format_version 4 is not supported"), std::string::npos) << message;
}

TEST_F(CheckpointTest, TruncatedFileIsAnError) {
  const Tensors model = small_model(9);
  const std::string path = save_checkpoint(dir_, sample_state(1), model.refs, 1);
  const auto size = fs::file_size(path);
  for (const auto keep : {size - 1, size / 2, uintmax_t{100}, uintmax_t{0}}) {
    const std::string copy = (root_ / fmt::format("cut_{}.h5", keep)).string();
    fs::copy_file(path, copy);
    fs::resize_file(copy, keep);
    Tensors loaded = model.empty_like();
    const std::string message = test::error_of([&] { load_checkpoint(copy, loaded.refs); });
    EXPECT_TRUE(message.starts_with(copy + ": ")) << keep << ": " << message;
    EXPECT_TRUE(test::error_of([&] { read_checkpoint_state(copy); }).starts_with(copy + ": "));
  }
}

// A flipped bit inside tensor data fails the chunk's checksum rather than loading a wrong value.
TEST_F(CheckpointTest, CorruptTensorDataIsAnError) {
  Tensors model;
  model.add(&model.refs.params, "w", {64, 64}, 10);
  const std::string path = save_checkpoint(dir_, sample_state(1), model.refs, 1);
  std::string bytes(fs::file_size(path), '\0');
  std::ifstream(path, std::ios::binary)
      .read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const auto* first = reinterpret_cast<const char*>(model.storage[0].data());
  const auto at = std::search(bytes.begin(), bytes.end(), first, first + 64);
  ASSERT_NE(at, bytes.end());
  bytes[static_cast<size_t>(at - bytes.begin()) + 1000] ^= 0x10;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  Tensors loaded = model.empty_like();
  const std::string message = test::error_of([&] { load_checkpoint(path, loaded.refs); });
  EXPECT_TRUE(message.starts_with(path + ": cannot read tensor params/w")) << message;
}

// Runs in the forked child: saves a large checkpoint of the given step, then exits.
[[noreturn]] void save_large_and_exit(const std::string& dir, uint64_t step) {
  int status = 0;
  try {
    std::vector<float> values(kLargeFloats, 0.5f);
    CheckpointTensors large;
    large.params.push_back(TensorRef{"large", {static_cast<int64_t>(kLargeFloats)}, values.data()});
    save_checkpoint(dir, sample_state(step), large, 3);
  } catch (const std::exception& e) {
    fprintf(stderr, "child: %s\n", e.what());
    status = 1;
  }
  ::_exit(status);  // no gtest teardown or static destructors in the child
}

// Waits until the child's temporary file holds some data (or the child is gone), then kills it.
// Returns whether the kill landed while the file was still being written.
bool kill_mid_write(pid_t child, const fs::path& tmp) {
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::minutes(2);  // hang guard only
  int status = 0;
  while (std::chrono::steady_clock::now() < give_up) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(tmp, ec);
    if (!ec && size >= (uintmax_t{4} << 20)) break;
    if (::waitpid(child, &status, WNOHANG) == child) return false;  // finished before we looked
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && fs::exists(tmp);
}

TEST_F(CheckpointTest, WriterKilledMidWriteLeavesPreviousCheckpoint) {
  const Tensors model = small_model(11);
  const TrainingState state = sample_state(10);
  const std::string previous = save_checkpoint(dir_, state, model.refs, 3);
  const fs::path tmp = step_path(20) + ".tmp";

  bool killed_mid_write = false;
  for (int attempt = 0; attempt < 3 && !killed_mid_write; ++attempt) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) save_large_and_exit(dir_, 20);
    killed_mid_write = kill_mid_write(child, tmp);
    if (!killed_mid_write) fs::remove(step_path(20));  // the child won the race: try again
  }
  ASSERT_TRUE(killed_mid_write) << "the writer finished before it could be killed";

  EXPECT_FALSE(fs::exists(step_path(20)));
  EXPECT_EQ(latest_checkpoint(dir_), previous);
  expect_loads_as(previous, model, state);

  // The next save cleans up what the dead writer left.
  const std::string next = save_checkpoint(dir_, sample_state(11), model.refs, 3);
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(latest_checkpoint(dir_), next);
  expect_loads_as(previous, model, state);
}

}  // namespace
}  // namespace cadtrain::trainer
