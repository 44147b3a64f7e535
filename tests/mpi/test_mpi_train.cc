// Data-parallel training under mpirun (trainer/parallel_group.h) against one process on the same
// global batch. W ranks with grad_accumulation a must see exactly the documents of one process
// with grad_accumulation W*a, and produce its loss and every parameter gradient:
//   - the gradients of one step, on every rank after synchronisation: per element
//     |g - ref| <= 1e-5 * (|ref| + rms(ref over the tensor)) (fp32; the sum over ranks adds the
//     micro-batches' contributions in another order than one process's accumulation), the loss
//     to 1e-6 relative, and the synchronised gradients the same bits on every rank;
//   - 20 training steps: loss and gradient norm per step to 1e-5 relative (Adam follows the
//     rounding differences, so they grow slowly over the steps: measured ~1e-6 here);
//   - resume across layouts, 2 ranks -> 1 rank -> 3 ranks, against 6 uninterrupted steps of one
//     process: the same tolerance per step.
// The model mixes attention and short-convolution layers (data parallelism keeps sequences whole).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "configs/config.h"
#include "data/dataset.h"
#include "data/default_corpus.h"
#include "data/packing.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "tests/mpi/mpi_test_main.h"
#include "trainer/batch.h"
#include "trainer/checkpoint.h"
#include "trainer/model.h"
#include "trainer/parallel_group.h"
#include "trainer/session.h"
#include "trainer/train_loop.h"

namespace cadtrain {
namespace {

namespace fs = std::filesystem;
using test::world;

// A directory every rank of `comm` agrees on (rank 0's pid names it), created empty.
fs::path shared_dir(parallel::Communicator& comm, const std::string& name) {
  int pid = ::getpid();
  comm.broadcast(host_view(std::span<int>(&pid, 1)), 0);
  const fs::path dir = fs::temp_directory_path() / ("cadtrain_mpi_train_" + std::to_string(pid) + "_" + name);
  if (comm.rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  comm.barrier();
  return dir;
}

config::RunConfig small_config(const fs::path& dir, const std::string& name, const std::vector<std::string>& extra) {
  std::vector<std::string> sets = {
      "name=" + name, "output_dir=" + dir.string(), "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
      "model.layer_kinds=[ATTENTION, SHORT_CONV]", "model.max_seq_len=256",
      "data.train_path=" + (dir / "train.h5").string(), "data.eval_path=" + (dir / "eval.h5").string(),
      "data.tokens_per_micro_batch=128",
      "data.synth={ n_docs: 160 mean_doc_tokens: 48 min_doc_tokens: 16 max_doc_tokens: 256 }",
      "schedule.warmup_steps=2", "schedule.decay=CONSTANT", "schedule.eval_every=0", "schedule.eval_batches=2",
      "checkpoint.every_steps=0", "parallel.threads=1", "optimizer.lr=3e-3"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return config::parse_run_config("", "test", sets);
}

std::vector<nlohmann::json> step_lines(const fs::path& metrics) {
  std::vector<nlohmann::json> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("eval")) out.push_back(j);
  }
  return out;
}

void expect_close(double got, double want, double rel, const std::string& what) {
  EXPECT_LE(std::abs(got - want), rel * std::abs(want)) << what << ": " << got << " vs " << want;
}

// Per-step loss and gradient norm of two runs' metrics.jsonl.
void expect_same_steps(const fs::path& got, const fs::path& want, size_t steps) {
  const auto a = step_lines(got), b = step_lines(want);
  ASSERT_EQ(a.size(), steps) << got;
  ASSERT_EQ(b.size(), steps) << want;
  for (size_t i = 0; i < steps; ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]) << "step " << i + 1 << ": the global batch must be the same";
    expect_close(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 1e-5, "loss, step " + std::to_string(i + 1));
    expect_close(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>(), 1e-5,
                 "grad_norm, step " + std::to_string(i + 1));
  }
}

// One step's loss and gradients: the single-process reference (every micro-batch of the global
// batch here) and the data-parallel ranks (their share, synchronised through the group).
TEST(MpiTrain, DataParallelStepMatchesOneProcess) {
  parallel::Communicator& comm = world();
  const int W = comm.size();
  const uint32_t a = 2;  // micro-batches per rank
  const fs::path dir = shared_dir(comm, "grads");
  const config::RunConfig cfg =
      small_config(dir, "grads", {"parallel.data_parallel=" + std::to_string(W), "data.grad_accumulation=2"});
  if (comm.rank() == 0) data::ensure_synthetic_datasets(cfg.data(), false);
  comm.barrier();
  const data::Dataset ds = data::Dataset::open(cfg.data().train_path());
  const auto backend = kernels::make_cpu_backend();
  const auto local = kernels::make_local_task_attention();
  const int64_t tokens_mb = 128;

  data::PackerOptions popt;
  popt.tokens_per_micro_batch = tokens_mb;
  popt.seed = cfg.seed();
  // Reference: one process, W * a micro-batches.
  trainer::Model ref(cfg.model(), tokens_mb, *backend, *local);
  ref.init_weights(cfg.seed());
  data::Packer ref_packer(ds, popt);
  std::vector<data::MicroBatch> all;
  double ref_weight = 0;
  for (uint32_t i = 0; i < W * a; ++i) {
    all.push_back(ref_packer.next());
    for (const float w : all.back().loss_mask) ref_weight += w;
  }
  double ref_loss = 0;
  for (const auto& mb : all) {
    ref_loss += ref.forward_backward(trainer::batch_view(mb), static_cast<float>(1.0 / ref_weight)).loss_sum;
  }
  ref_loss /= ref_weight;

  // This rank's share, through the group (small buckets: several reductions overlap the backward).
  const auto group = trainer::make_parallel_group(comm, cfg, 1000);
  EXPECT_EQ(group->data_rank(), static_cast<uint32_t>(comm.rank()));
  EXPECT_EQ(group->is_writer(), comm.rank() == 0);
  trainer::Model model(cfg.model(), tokens_mb, *backend, *local);
  model.init_weights(cfg.seed());
  const auto sync = group->make_gradient_sync(model.params(), *backend);
  popt.rank = group->data_rank();
  popt.world = group->data_ranks();
  data::Packer packer(ds, popt);
  std::vector<data::MicroBatch> mine;
  double sums[2] = {0, 0};
  for (uint32_t i = 0; i < a; ++i) {
    mine.push_back(packer.next());
    for (const float w : mine.back().loss_mask) sums[0] += w;
    // Rank r's i-th micro-batch is global micro-batch i * W + r.
    EXPECT_EQ(mine.back().doc_ids, all[i * W + comm.rank()].doc_ids) << "micro-batch " << i;
  }
  group->sum_over_batch(std::span<double>(sums, 1));
  EXPECT_EQ(sums[0], ref_weight);
  for (uint32_t i = 0; i < a; ++i) {
    sums[1] += model.forward_backward(trainer::batch_view(mine[i]), static_cast<float>(1.0 / sums[0]),
                                      i + 1 == a ? sync.get() : nullptr).loss_sum;
  }
  sync->finish_step();
  group->sum_over_batch(std::span<double>(&sums[1], 1));
  expect_close(sums[1] / sums[0], ref_loss, 1e-6, "loss");

  trainer::ParameterSet& p = model.params();
  for (size_t t = 0; t < p.infos().size(); ++t) {
    const auto& info = p.info(t);
    const float* g = p.grads() + info.offset;
    const float* r = ref.params().grads() + info.offset;
    double ss = 0;
    for (size_t i = 0; i < info.numel; ++i) ss += static_cast<double>(r[i]) * r[i];
    const double rms = std::sqrt(ss / static_cast<double>(info.numel));
    ASSERT_GT(rms, 0) << info.name << ": the reference gradient is zero, the check would prove nothing";
    int bad = 0;
    for (size_t i = 0; i < info.numel; ++i) {
      if (std::abs(g[i] - r[i]) > 1e-5 * (std::abs(r[i]) + rms) && bad++ < 3) {
        ADD_FAILURE() << "rank " << comm.rank() << ": " << info.name << "[" << i << "] = " << g[i] << ", one process "
                      << r[i];
      }
    }
  }
  // Every rank holds the same bits (the optimizers then stay in step without any broadcast).
  std::vector<float> root(p.grads(), p.grads() + p.total());
  comm.broadcast(host_view(root), 0);
  EXPECT_EQ(std::memcmp(root.data(), p.grads(), p.total() * sizeof(float)), 0) << "rank " << comm.rank();
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

// 20 steps of `train` on W ranks (grad_accumulation 2) against one process (grad_accumulation 2W).
// (2 ranks only: the resume test below trains on 3.)
TEST(MpiTrain, TwentyStepsMatchOneProcessStepForStep) {
  parallel::Communicator& comm = world();
  const int W = comm.size();
  if (W != 2) GTEST_SKIP() << "runs on 2 ranks";
  const fs::path dir = shared_dir(comm, "steps");
  const std::vector<std::string> common = {"schedule.total_steps=20", "data.generate_if_missing=true"};
  if (comm.rank() == 0) {
    auto sets = common;
    sets.push_back("data.grad_accumulation=" + std::to_string(2 * W));
    const trainer::TrainResult r = trainer::train(small_config(dir, "single", sets), "test", "");
    EXPECT_EQ(r.steps, 20u);
  }
  comm.barrier();
  auto sets = common;
  sets.push_back("data.grad_accumulation=2");
  sets.push_back("parallel.data_parallel=" + std::to_string(W));
  const config::RunConfig cfg = small_config(dir, "dp", sets);
  const auto group = trainer::make_parallel_group(comm, cfg, 4096);
  const trainer::TrainResult r = trainer::train(cfg, "test", "", *group);
  EXPECT_EQ(r.steps, 20u);
  // Only the writer evaluates and writes checkpoints.
  EXPECT_EQ(r.evaluated, comm.rank() == 0);
  EXPECT_EQ(r.checkpoint.empty(), comm.rank() != 0);
  comm.barrier();
  if (comm.rank() == 0) {
    expect_same_steps(dir / "dp" / "metrics.jsonl", dir / "single" / "metrics.jsonl", 20);
    fs::remove_all(dir);
  }
}

// A run moves 2 ranks -> 1 rank -> 3 ranks through its checkpoints (the same global batch of 6
// micro-batches each time) and matches 6 uninterrupted single-process steps.
TEST(MpiTrain, ResumesOnAnotherDataParallelLayout) {
  parallel::Communicator& comm = world();
  if (comm.size() != 3) GTEST_SKIP() << "needs 3 ranks";
  const int me = comm.rank();
  const fs::path dir = shared_dir(comm, "resume");
  const auto moving = [&](int dp, int steps) {
    return small_config(dir, "moving",
                        {"parallel.data_parallel=" + std::to_string(dp),
                         "data.grad_accumulation=" + std::to_string(6 / dp),
                         "schedule.total_steps=" + std::to_string(steps), "checkpoint.every_steps=0"});
  };
  if (me == 0) {
    data::ensure_synthetic_datasets(moving(1, 6).data(), false);
    trainer::train(small_config(dir, "ref", {"data.grad_accumulation=6", "schedule.total_steps=6"}), "test", "");
  }
  comm.barrier();
  const auto pair = comm.split(me < 2 ? 0 : 1, me, "pair");
  const auto alone = comm.split(me == 0 ? 0 : 1, me, "alone");
  if (me < 2) {
    const config::RunConfig cfg = moving(2, 2);
    const auto group = trainer::make_parallel_group(*pair, cfg, 4096);
    EXPECT_EQ(trainer::train(cfg, "test", "", *group).steps, 2u);
  }
  comm.barrier();
  if (me == 0) {
    const config::RunConfig cfg = moving(1, 4);
    const auto group = trainer::make_parallel_group(*alone, cfg, 4096);
    EXPECT_EQ(trainer::train(cfg, "test", (dir / "moving").string(), *group).steps, 4u);
  }
  comm.barrier();
  {
    const config::RunConfig cfg = moving(3, 6);
    const auto group = trainer::make_parallel_group(comm, cfg, 4096);
    EXPECT_EQ(trainer::train(cfg, "test", (dir / "moving").string(), *group).steps, 6u);
  }
  comm.barrier();
  if (me == 0) {
    expect_same_steps(dir / "moving" / "metrics.jsonl", dir / "ref" / "metrics.jsonl", 6);
    // The final weights too.
    trainer::LoadedModel a = trainer::load_model((dir / "moving").string(), 0);
    trainer::LoadedModel b = trainer::load_model((dir / "ref").string(), 0);
    EXPECT_EQ(a.step, 6u);
    trainer::ParameterSet& pa = a.session.model->params();
    trainer::ParameterSet& pb = b.session.model->params();
    ASSERT_EQ(pa.total(), pb.total());
    double worst = 0;
    for (size_t i = 0; i < pa.total(); ++i) {
      worst = std::max(worst, static_cast<double>(std::abs(pa.params()[i] - pb.params()[i])));
    }
    EXPECT_LE(worst, 1e-5) << "largest weight difference after 6 steps";
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace cadtrain
