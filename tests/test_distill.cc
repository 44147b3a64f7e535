// Distillation end to end: the teacher store's format and its refusals (wrong dataset, vocabulary
// or K), `distill prepare` against the teacher's own logits, and a student run whose step lines
// carry CE and KD separately with loss = CE + lambda * KD.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "configs/config.h"
#include "data/dataset.h"
#include "data/default_corpus.h"
#include "data/teacher_store.h"
#include "test_util.h"
#include "trainer/distill_prepare.h"
#include "trainer/model.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace cadtrain {
namespace {

namespace fs = std::filesystem;

class DistillTest : public ::testing::Test {
 protected:
  config::RunConfig small_config(const std::string& name, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> sets = {
        "name=" + name, "output_dir=" + dir_.path().string(), "model.d_model=32", "model.n_layers=2",
        "model.n_heads=2", "model.max_seq_len=512", "data.train_path=" + dir_ / "train.h5",
        "data.eval_path=" + dir_ / "eval.h5", "data.tokens_per_micro_batch=256", "data.grad_accumulation=1",
        "data.synth={ n_docs: 60 mean_doc_tokens: 96 min_doc_tokens: 16 max_doc_tokens: 300 }",
        "schedule.total_steps=4", "schedule.warmup_steps=2", "schedule.eval_every=0", "schedule.eval_batches=1",
        "checkpoint.every_steps=0", "parallel.threads=2"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return config::parse_run_config("", "test", sets);
  }

  // Trains a small teacher (which also generates train.h5) and returns its run directory.
  std::string train_teacher() {
    trainer::train(small_config("teacher"), "test", "");
    return (dir_.path() / "teacher").string();
  }

  test::TempDir dir_;
};

TEST_F(DistillTest, StoreRoundTripAndRowCountChecks) {
  data::TeacherStoreInfo info;
  info.k = 2, info.vocab_size = 10, info.n_tokens = 3, info.n_docs = 1, info.dataset_fingerprint = 77;
  info.teacher = "t.h5";
  const std::string path = dir_ / "store.h5";
  {
    data::TeacherStoreWriter w(path, info);
    const std::vector<int32_t> ids = {1, 2, 3, 4};
    const std::vector<float> lp = {-0.1f, -2.0f, -0.5f, -1.0f};
    w.append(ids.data(), lp.data(), 2);
    EXPECT_NE(test::error_of([&] { w.finish(); }).find("2 rows written, the dataset has 3 tokens"), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  {
    data::TeacherStoreWriter w(path, info);
    const std::vector<int32_t> ids = {1, 2, 3, 4, 9, 0};
    const std::vector<float> lp = {-0.1f, -2.0f, -0.5f, -1.0f, -3.0f, -4.0f};
    const std::vector<int32_t> bad = {1, 10};
    EXPECT_NE(test::error_of([&] { w.append(bad.data(), lp.data(), 1); }).find("id 10 outside"), std::string::npos);
    w.append(ids.data(), lp.data(), 3);
    w.finish();
  }
  const data::TeacherStore store = data::TeacherStore::open(path);
  EXPECT_EQ(store.info().k, 2u);
  EXPECT_EQ(store.info().dataset_fingerprint, 77u);
  EXPECT_EQ(store.info().teacher, "t.h5");
  std::vector<int32_t> ids(4);
  std::vector<float> lp(4);
  store.read(1, 2, ids.data(), lp.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 4, 9, 0}));
  EXPECT_EQ(lp, (std::vector<float>{-0.5f, -1.0f, -3.0f, -4.0f}));
  EXPECT_NE(test::error_of([&] { store.read(2, 2, ids.data(), lp.data()); }).find("outside the store's 3 rows"),
            std::string::npos);
}

TEST_F(DistillTest, PrepareStoresTheTeachersTopKAndRefusesAnotherDatasetVocabOrK) {
  const std::string teacher = train_teacher();
  trainer::DistillPrepareOptions o;
  o.teacher = teacher;
  o.data = dir_ / "train.h5";
  o.out = dir_ / "teacher_top8.h5";
  o.k = 8;
  const trainer::DistillPrepareSummary s = trainer::distill_prepare(o);
  const data::Dataset ds = data::Dataset::open(o.data);
  EXPECT_EQ(s.tokens, ds.num_tokens());
  EXPECT_GT(s.mean_top_k_mass, 0.0);
  EXPECT_LE(s.mean_top_k_mass, 1.0 + 1e-6);

  // Document 5 through the teacher alone: its rows must be its top-8 log-softmax entries.
  trainer::LoadedModel m = trainer::load_model(teacher, 512);
  const std::vector<uint32_t> doc = ds.read_doc(5);
  const auto n = static_cast<int64_t>(doc.size());
  std::vector<int32_t> positions(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) positions[i] = static_cast<int32_t>(i);
  const std::vector<int32_t> cu = {0, static_cast<int32_t>(n)};
  std::vector<uint32_t> targets(doc.size(), 0);
  std::vector<float> mask(doc.size(), 0.0f);
  trainer::Batch b;
  b.n = n, b.tokens = doc.data(), b.targets = targets.data(), b.loss_mask = mask.data();
  b.positions = positions.data(), b.cu_seqlens = cu.data(), b.n_seqs = 1;
  const int64_t v = m.session.model->dims().vocab;
  std::vector<float> logits(static_cast<size_t>(n * v));
  m.session.model->logits(b, logits.data());
  const data::TeacherStore store = data::TeacherStore::open(o.out);
  std::vector<int32_t> ids(static_cast<size_t>(n) * 8);
  std::vector<float> lp(static_cast<size_t>(n) * 8);
  store.read(ds.doc_offsets()[5], static_cast<uint64_t>(n), ids.data(), lp.data());
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits.data() + i * v;
    double mx = z[0], sum = 0;
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, static_cast<double>(z[j]));
    for (int64_t j = 0; j < v; ++j) sum += std::exp(z[j] - mx);
    const double lse = mx + std::log(sum);
    std::vector<float> sorted(z, z + v);
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    for (int k = 0; k < 8; ++k) {
      const int32_t id = ids[i * 8 + k];
      // The k-th id holds the k-th largest logit (ids of equal logits may come in either order).
      ASSERT_NEAR(z[id], sorted[k], 1e-4) << "token " << i << " rank " << k;
      ASSERT_NEAR(lp[i * 8 + k], z[id] - lse, 1e-4) << "token " << i << " rank " << k;
    }
  }

  // Refusals, each naming what differs.
  data::DatasetWriterOptions wo;
  wo.vocab_size = ds.vocab_size();
  {
    data::DatasetWriter w(dir_ / "other.h5", wo);
    w.add_document(ds.read_doc(0));
    w.finish();
  }
  const data::Dataset other = data::Dataset::open(dir_ / "other.h5");
  const auto student_vocab = static_cast<uint32_t>(v);
  EXPECT_NE(test::error_of([&] { store.check_matches(other, student_vocab, 8); }).find("prepared from another dataset"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { store.check_matches(ds, student_vocab + 1, 8); }).find("vocab_size"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { store.check_matches(ds, student_vocab, 16); }).find("--k 16"), std::string::npos);
  store.check_matches(ds, student_vocab, 0);  // the right dataset, any K

  // A student trained against the store reports CE and KD separately, and loss = CE + lambda KD.
  auto student = small_config("student", {"model.d_model=16", "loss.distill.teacher_path=" + o.out,
                                          "loss.distill.weight=0.5", "loss.distill.temperature=2",
                                          "loss.distill.k=8"});
  const trainer::TrainResult r = trainer::train(student, "test", "");
  EXPECT_EQ(r.steps, 4u);
  std::ifstream in(dir_.path() / "student" / "metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("eval")) continue;
    ++steps;
    ASSERT_TRUE(j.contains("ce") && j.contains("kd")) << line;
    const double ce = j["ce"].get<double>(), kd = j["kd"].get<double>();
    EXPECT_GT(kd, 0.0);
    EXPECT_NEAR(j["loss"].get<double>(), ce + 0.5 * kd, 1e-9 * (ce + kd));
  }
  EXPECT_EQ(steps, 4);

  // The same store against another training set is refused before training starts.
  auto wrong = small_config("wrong", {"loss.distill.teacher_path=" + o.out, "data.train_path=" + dir_ / "other.h5"});
  EXPECT_NE(test::error_of([&] { trainer::train(wrong, "test", ""); }).find("prepared from another dataset"),
            std::string::npos);
}

}  // namespace
}  // namespace cadtrain
