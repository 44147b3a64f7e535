// Tests of model merging: each method on tiny hand-computed tensors, dare's determinism and
// statistics, option validation, and the streaming merge of checkpoint files (atomic output,
// mismatched names and shapes refused naming the tensor).
#include <gtest/gtest.h>

#include <cmath>       // std::fabs
#include <filesystem>  // output files
#include <string>
#include <vector>

#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/merge.h"

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;
using Matrix = std::vector<std::vector<float>>;

std::vector<float> merge(const MergeOptions& o, const std::vector<float>& base, const Matrix& models,
                         std::string_view name = "w") {
  validate_merge_options(o, models.size());
  std::vector<float> out(base.size(), -99.0f);
  merge_tensor(
      o, name, base, models.size(),
      [&](size_t i, std::span<float> dst) { std::copy(models[i].begin(), models[i].end(), dst.begin()); }, out);
  return out;
}

void expect_near(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "element " << i;
}

TEST(MergeTensor, WeightedSoupIsTheNormalizedWeightedMean) {
  MergeOptions o;
  o.method = MergeMethod::kSoup;
  o.weights = {1, 3};
  // (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5; the base (100) plays no part.
  expect_near(merge(o, {100, 100}, {{1, 2}, {3, 6}}), {2.5f, 5.0f});
  o.weights = {};
  expect_near(merge(o, {100, 100}, {{1, 2}, {3, 6}}), {2.0f, 4.0f});
}

TEST(MergeTensor, TaskArithmeticAddsWeightedTaskVectors) {
  MergeOptions o;
  o.method = MergeMethod::kTaskArithmetic;
  o.weights = {1, 0.5};
  // tau1 = (1, -1), tau2 = (3, 0): 1 + (1 + 1.5) = 3.5, 1 + (-1 + 0) = 0.
  expect_near(merge(o, {1, 1}, {{2, 0}, {4, 1}}), {3.5f, 0.0f});
  o.scale = 2;
  expect_near(merge(o, {1, 1}, {{2, 0}, {4, 1}}), {6.0f, -1.0f});
}

TEST(MergeTensor, TiesTrimsElectsSignAndAveragesTheAgreeingEntries) {
  MergeOptions o;
  o.method = MergeMethod::kTies;
  o.density = 0.5;  // keep 2 of 4 per model
  const std::vector<float> base = {1, 1, 1, 1};
  // Task vectors and what trimming keeps:
  //   tau1 = ( 4, -1,  0.5, -3)  -> ( 4, 0,  0, -3)
  //   tau2 = (-2,  5, -0.1, -1)  -> (-2, 5,  0,  0)
  //   tau3 = ( 1,  2,   -6, 0.2) -> ( 0, 2, -6,  0)
  // Elected signs of the sums (2, 7, -6, -3): +, +, -, -. Agreeing means: 4, (5+2)/2, -6, -3.
  const Matrix models = {{5, 0, 1.5f, -2}, {-1, 6, 0.9f, 0}, {2, 3, -5, 1.2f}};
  expect_near(merge(o, base, models), {5.0f, 4.5f, -5.0f, -2.0f});
  // Weights enter the sign election and the mean: w = (1, 3, 1) flips element 0 to tau2's sign.
  o.weights = {1, 3, 1};
  expect_near(merge(o, base, models), {-1.0f, 1 + (3 * 5 + 2) / 4.0f, -5.0f, -2.0f});
}

TEST(MergeTensor, TiesKeepsEqualMagnitudesInIndexOrder) {
  MergeOptions o;
  o.method = MergeMethod::kTies;
  o.density = 0.5;
  // Four equal magnitudes, keep 2: the first two survive.
  expect_near(merge(o, {0, 0, 0, 0}, {{1, -1, 1, -1}}), {1, -1, 0, 0});
  o.density = 1;  // keep all: one model gives itself back
  expect_near(merge(o, {0, 0, 0, 0}, {{1, -1, 1, -1}}), {1, -1, 1, -1});
}

TEST(MergeTensor, DareWithoutDropIsTaskArithmetic) {
  MergeOptions ta;
  ta.method = MergeMethod::kTaskArithmetic;
  ta.weights = {0.7, 0.3};
  MergeOptions dare = ta;
  dare.method = MergeMethod::kDare;
  dare.drop = 0;
  const Matrix models = {{1, 2, 3}, {-4, 5, 0.5f}};
  expect_near(merge(dare, {0.5f, 0.5f, 0.5f}, models), merge(ta, {0.5f, 0.5f, 0.5f}, models));
}

TEST(MergeTensor, DareIsDeterministicFromTheSeedAndRescalesWhatItKeeps) {
  constexpr size_t kN = 20000;
  MergeOptions o;
  o.method = MergeMethod::kDare;
  o.drop = 0.75;
  o.seed = 7;
  const std::vector<float> base(kN, 1.0f);
  const Matrix models = {std::vector<float>(kN, 3.0f)};  // tau = 2 everywhere
  const std::vector<float> a = merge(o, base, models);
  EXPECT_EQ(a, merge(o, base, models));
  size_t kept = 0;
  for (const float v : a) {
    // Either dropped (the base) or kept and rescaled: 1 + 2 / (1 - 0.75) = 9.
    ASSERT_TRUE(v == 1.0f || v == 9.0f) << v;
    kept += v == 9.0f ? 1 : 0;
  }
  // Binomial(20000, 0.25): mean 5000, standard deviation about 61; the seed is fixed.
  EXPECT_NEAR(static_cast<double>(kept), 5000.0, 300.0);
  o.seed = 8;
  EXPECT_NE(a, merge(o, base, models));
  o.seed = 7;  // another tensor name draws other masks
  EXPECT_NE(a, merge(o, base, models, "other"));
}

TEST(MergeTensor, DareMasksDifferPerModel) {
  MergeOptions o;
  o.method = MergeMethod::kDare;
  o.drop = 0.5;
  const std::vector<float> base(64, 0.0f);
  // Two identical models: with one shared mask every element would be 0 or 2*2*1 = 4.
  const Matrix models = {std::vector<float>(64, 1.0f), std::vector<float>(64, 1.0f)};
  const std::vector<float> out = merge(o, base, models);
  size_t twos = 0;
  for (const float v : out) twos += v == 2.0f ? 1 : 0;
  EXPECT_GT(twos, 0u);
}

TEST(MergeOptions, InvalidCombinationsAreNamed) {
  MergeOptions o;
  o.method = MergeMethod::kTies;
  EXPECT_NE(test::error_of([&] { validate_merge_options(o, 2); }).find("--density"), std::string::npos);
  o.density = 0.3;
  o.weights = {1};
  EXPECT_NE(test::error_of([&] { validate_merge_options(o, 2); }).find("1 weights for 2 models"), std::string::npos);
  o.method = MergeMethod::kDare;
  o.weights = {};
  EXPECT_NE(test::error_of([&] { validate_merge_options(o, 2); }).find("--density applies to ties"),
            std::string::npos);
  o.density = -1;
  o.drop = 1;
  EXPECT_NE(test::error_of([&] { validate_merge_options(o, 2); }).find("--drop"), std::string::npos);
  o.method = MergeMethod::kSoup;
  o.drop = -1;
  o.weights = {1, -1};
  EXPECT_NE(test::error_of([&] { validate_merge_options(o, 2); }).find("negative"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse_merge_method("average"); }).find("soup, task_arithmetic, ties, dare"),
            std::string::npos);
  EXPECT_EQ(parse_merge_method("ties"), MergeMethod::kTies);
}

// ---- checkpoint files ----

class MergeFiles : public ::testing::Test {
 protected:
  // A weights-only checkpoint with tensors "a" [2] and "b" [1, 2] holding the given values.
  std::string save(const std::string& name, std::vector<float> a, std::vector<float> b,
                   std::vector<int64_t> b_shape = {1, 2}, const std::string& b_name = "b") {
    storage_.push_back(std::move(a));
    float* pa = storage_.back().data();
    storage_.push_back(std::move(b));
    CheckpointTensors t;
    t.params = {{"a", {2}, pa}, {b_name, std::move(b_shape), storage_.back().data()}};
    TrainingState state;
    state.step = 42;
    state.config_text = "# base config\n";
    const std::string path = save_checkpoint(dir_ / name, state, t, 1);
    return path;
  }

  std::vector<float> load(const std::string& path, const std::string& name, std::vector<int64_t> shape) {
    std::vector<float> v(2);
    CheckpointReader(path).read(kParamsGroup, TensorRef{name, std::move(shape), v.data()});
    return v;
  }

  test::TempDir dir_;
  std::vector<std::vector<float>> storage_;
};

TEST_F(MergeFiles, MergesEveryTensorAndKeepsTheBaseState) {
  const std::string base = save("base", {1, 1}, {0, 0});
  const std::string m1 = save("m1", {2, 3}, {1, -1});
  const std::string m2 = save("m2", {4, 1}, {3, 1});
  MergeOptions o;
  o.method = MergeMethod::kTaskArithmetic;
  o.weights = {1, 0.5};
  const std::string out = dir_ / "merged.h5";
  const MergeSummary s = merge_checkpoints(base, {m1, m2}, o, out);
  EXPECT_EQ(s.tensors, 2u);
  EXPECT_EQ(s.parameters, 4u);
  expect_near(load(out, "a", {2}), {1 + 1 + 1.5f, 1 + 2 + 0.0f});
  expect_near(load(out, "b", {1, 2}), {1 + 1.5f, -1 + 0.5f});
  const TrainingState state = read_checkpoint_state(out);
  EXPECT_EQ(state.step, 42u);
  EXPECT_EQ(state.config_text, "# base config\n");
  EXPECT_FALSE(fs::exists(out + ".tmp"));
}

TEST_F(MergeFiles, MismatchedShapeIsRefusedNamingTheTensorAndWritesNothing) {
  const std::string base = save("base", {1, 1}, {0, 0});
  const std::string bad = save("bad", {1, 1}, {0, 0}, {2, 1});
  MergeOptions o;
  const std::string out = dir_ / "merged.h5";
  const std::string error = test::error_of([&] { merge_checkpoints(base, {bad}, o, out); });
  EXPECT_NE(error.find("params/b has shape [2, 1]"), std::string::npos) << error;
  EXPECT_NE(error.find("[1, 2] in the base"), std::string::npos) << error;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".tmp"));
}

TEST_F(MergeFiles, MissingAndExtraTensorsAreRefusedByName) {
  const std::string base = save("base", {1, 1}, {0, 0});
  const std::string renamed = save("renamed", {1, 1}, {0, 0}, {1, 2}, "c");
  MergeOptions o;
  const std::string out = dir_ / "merged.h5";
  const std::string error = test::error_of([&] { merge_checkpoints(base, {renamed}, o, out); });
  EXPECT_NE(error.find("params/c is not in the base"), std::string::npos) << error;
  const std::string reverse = test::error_of([&] { merge_checkpoints(renamed, {base}, o, out); });
  EXPECT_NE(reverse.find("params/b is not in the base"), std::string::npos) << reverse;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(MergeFiles, OutputMayNotBeAnInput) {
  const std::string base = save("base", {1, 1}, {0, 0});
  MergeOptions o;
  EXPECT_NE(test::error_of([&] { merge_checkpoints(base, {base}, o, base); }).find("also an input"),
            std::string::npos);
}

}  // namespace
}  // namespace cadtrain::trainer
