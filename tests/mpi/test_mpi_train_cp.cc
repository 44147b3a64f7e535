// Context parallelism in training (trainer/parallel_group.h with RING or TOKENRING) under mpirun
// against one process with LOCAL attention on the same global batch: a context-parallel group of
// P ranks shares micro-batches of P x tokens_per_micro_batch tokens, each rank trains on its share
// of the rows (zigzag or plain split), and after gradient synchronisation every rank must hold the
// single process's gradient of the whole global batch, and the same loss.
//   - Gradients per element: |g - ref| <= 2e-5 * (|ref| + rms(ref over the tensor)) (fp32; ring
//     steps merge partial softmax results and the sum over ranks adds in another order than one
//     process); loss 1e-6 relative; the synchronised gradients the same bits on every rank.
//   - Batches: the packer's (documents up to 2x a rank's share, so documents run across ranks),
//     and a hand-made mix with a document longer than a rank's share, documents shorter than the
//     number of ranks, and (at 4 ranks) ranks whose share is empty.
//   - `train` itself on data parallel x context parallel (2 x 2): 5 steps, loss and gradient norm
//     per step to 1e-5 relative against one process.
// Attention layers only: check_supported rejects short convolutions under context parallelism.
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
#include "tests/model_test_util.h"
#include "tests/mpi/mpi_test_main.h"
#include "trainer/batch.h"
#include "trainer/model.h"
#include "trainer/parallel_group.h"
#include "trainer/train_loop.h"

namespace cadtrain {
namespace {

namespace fs = std::filesystem;
using test::world;

constexpr int64_t kTokensPerMicroBatch = 64;  // per rank: a context-parallel group packs P x this

struct Layout {
  int dp = 1, cp = 1;
  const char* strategy = "RING";
  bool zigzag = true;
  std::string describe() const {
    return "dp " + std::to_string(dp) + " x cp " + std::to_string(cp) + ", " + strategy + (zigzag ? " zigzag" : " plain");
  }
};

fs::path shared_dir(parallel::Communicator& comm, const std::string& name) {
  int pid = ::getpid();
  comm.broadcast(host_view(std::span<int>(&pid, 1)), 0);
  const fs::path dir = fs::temp_directory_path() / ("cadtrain_mpi_cp_" + std::to_string(pid) + "_" + name);
  if (comm.rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  comm.barrier();
  return dir;
}

config::RunConfig cp_config(const fs::path& dir, const std::string& name, const Layout& l,
                            const std::vector<std::string>& extra = {}) {
  std::vector<std::string> sets = {
      "name=" + name, "output_dir=" + dir.string(), "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
      "model.n_kv_heads=2", "model.layer_kinds=[ATTENTION, ATTENTION]", "model.max_seq_len=256",
      "data.train_path=" + (dir / "train.h5").string(), "data.eval_path=" + (dir / "eval.h5").string(),
      "data.tokens_per_micro_batch=" + std::to_string(kTokensPerMicroBatch),
      "data.synth={ n_docs: 120 mean_doc_tokens: 64 min_doc_tokens: 16 max_doc_tokens: 128 }",
      "schedule.warmup_steps=2", "schedule.decay=CONSTANT", "schedule.eval_every=0", "checkpoint.every_steps=0",
      "parallel.threads=1", "optimizer.lr=3e-3", "parallel.data_parallel=" + std::to_string(l.dp),
      "parallel.context_parallel=" + std::to_string(l.cp), std::string("attention.strategy=") + l.strategy,
      std::string("attention.ring.zigzag=") + (l.zigzag ? "true" : "false")};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return config::parse_run_config("", "test", sets);
}

// The single process's gradient of `globals` (the whole global batch, in global order) against
// the layout's: data rank d takes globals[i * dp + d] and trains on its context share.
void check_step(const Layout& l, const config::RunConfig& cfg, const std::vector<data::MicroBatch>& globals) {
  parallel::Communicator& comm = world();
  const std::string what = "rank " + std::to_string(comm.rank()) + ", " + l.describe() + ": ";
  const auto backend = kernels::make_cpu_backend();
  const auto local = kernels::make_local_task_attention();
  const int64_t max_tokens = kTokensPerMicroBatch * l.cp;

  trainer::Model ref(cfg.model(), max_tokens, *backend, *local);
  ref.init_weights(cfg.seed());
  double ref_weight = 0, ref_loss = 0;
  for (const auto& mb : globals) {
    for (const float w : mb.loss_mask) ref_weight += w;
  }
  for (const auto& mb : globals) {
    ref_loss += ref.forward_backward(trainer::batch_view(mb), static_cast<float>(1.0 / ref_weight)).loss_sum;
  }
  ref_loss /= ref_weight;

  const auto group = trainer::make_parallel_group(comm, cfg, 777);
  ASSERT_EQ(group->context_ranks(), static_cast<uint32_t>(l.cp));
  const auto attention = group->make_core_attention();
  ASSERT_NE(attention, nullptr) << what << "RING and TOKENRING must give the group's attention";
  trainer::Model model(cfg.model(), max_tokens, *backend, *attention);
  model.init_weights(cfg.seed());
  const auto sync = group->make_gradient_sync(model.params(), *backend);
  std::vector<data::MicroBatch> mine;
  double sums[2] = {0, 0};
  for (size_t g = group->data_rank(); g < globals.size(); g += group->data_ranks()) {
    mine.push_back(group->context_share(globals[g]));
    for (const float w : mine.back().loss_mask) sums[0] += w;
  }
  group->sum_over_batch(std::span<double>(sums, 1));
  EXPECT_EQ(sums[0], ref_weight) << what << "the shares must hold every target of the global batch once";
  for (size_t i = 0; i < mine.size(); ++i) {
    sums[1] += model.forward_backward(trainer::batch_view(mine[i]), static_cast<float>(1.0 / sums[0]),
                                      i + 1 == mine.size() ? sync.get() : nullptr).loss_sum;
  }
  sync->finish_step();
  group->sum_over_batch(std::span<double>(&sums[1], 1));
  EXPECT_LE(std::abs(sums[1] / sums[0] - ref_loss), 1e-6 * std::abs(ref_loss)) << what << "loss";

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
      if (std::abs(g[i] - r[i]) > 2e-5 * (std::abs(r[i]) + rms) && bad++ < 3) {
        ADD_FAILURE() << what << info.name << "[" << i << "] = " << g[i] << ", one process " << r[i];
      }
    }
  }
  std::vector<float> root(p.grads(), p.grads() + p.total());
  comm.broadcast(host_view(root), 0);
  EXPECT_EQ(std::memcmp(root.data(), p.grads(), p.total() * sizeof(float)), 0) << what << "bits differ from rank 0";
}

// The packer's global batch: a context-parallel group packs P x tokens_per_micro_batch, and data
// rank d's packer gives exactly global micro-batches d, d + dp, ...
void check_packed(const Layout& l) {
  parallel::Communicator& comm = world();
  if (comm.size() != l.dp * l.cp) GTEST_SKIP() << l.describe() << " needs " << l.dp * l.cp << " ranks";
  const fs::path dir = shared_dir(comm, "step");
  const config::RunConfig cfg = cp_config(dir, "step", l);
  if (comm.rank() == 0) data::ensure_synthetic_datasets(cfg.data(), false);
  comm.barrier();
  const data::Dataset ds = data::Dataset::open(cfg.data().train_path());
  const uint32_t a = 2;
  data::PackerOptions popt;
  popt.tokens_per_micro_batch = static_cast<uint64_t>(kTokensPerMicroBatch * l.cp);
  popt.seed = cfg.seed();
  popt.cut_long_documents = false;
  data::Packer one(ds, popt);
  std::vector<data::MicroBatch> globals;
  bool crosses = false;  // some document is longer than a rank's share
  for (uint32_t i = 0; i < a * l.dp; ++i) {
    globals.push_back(one.next());
    for (size_t s = 0; s + 1 < globals.back().cu_seqlens.size(); ++s) {
      crosses |= globals.back().cu_seqlens[s + 1] - globals.back().cu_seqlens[s] > kTokensPerMicroBatch;
    }
  }
  EXPECT_TRUE(crosses || l.cp == 1) << "the batch should hold a document longer than a rank's share";
  const int data_rank = comm.rank() / l.cp;  // parallel/topology.h: cp index fastest
  popt.rank = static_cast<uint32_t>(data_rank);
  popt.world = static_cast<uint32_t>(l.dp);
  data::Packer mine(ds, popt);
  for (uint32_t i = 0; i < a; ++i) EXPECT_EQ(mine.next().doc_ids, globals[i * l.dp + data_rank].doc_ids);
  check_step(l, cfg, globals);
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

// A hand-made global batch per data rank: a document longer than a rank's share, one starting at
// position 30 (a tail), documents shorter than the number of ranks; and a batch of tiny documents
// that leaves some ranks of a 4-rank group without any row.
void check_mix(const Layout& l) {
  parallel::Communicator& comm = world();
  if (comm.size() != l.dp * l.cp) GTEST_SKIP() << l.describe() << " needs " << l.dp * l.cp << " ranks";
  const config::RunConfig cfg = cp_config(fs::temp_directory_path(), "mix", l);
  std::vector<data::MicroBatch> globals;
  uint64_t doc = 700;
  for (int d = 0; d < l.dp; ++d) {
    for (const std::vector<int32_t>& lengths :
         {std::vector<int32_t>{40 * l.cp, 25, 1, 3, 2, 11}, std::vector<int32_t>{1, 2, 1}}) {
      data::MicroBatch g = test::make_batch(lengths, cfg.model().vocab_size(), 5 + doc);
      for (size_t s = 0; s + 1 < g.cu_seqlens.size(); ++s) {
        g.doc_ids.push_back(doc++);
        if (s == 1) {
          for (int32_t i = g.cu_seqlens[s]; i < g.cu_seqlens[s + 1]; ++i) g.positions[static_cast<size_t>(i)] += 30;
        }
      }
      globals.push_back(std::move(g));
    }
  }
  // Global order: data rank d's micro-batches are d, d + dp, ...
  std::vector<data::MicroBatch> ordered;
  for (size_t i = 0; i < 2; ++i) {
    for (int d = 0; d < l.dp; ++d) ordered.push_back(globals[static_cast<size_t>(d) * 2 + i]);
  }
  check_step(l, cfg, ordered);
}

TEST(MpiTrainCp, RingZigzag) { check_packed({1, world().size(), "RING", true}); }
TEST(MpiTrainCp, RingPlain) { check_packed({1, world().size(), "RING", false}); }
TEST(MpiTrainCp, TokenRing) { check_packed({1, world().size(), "TOKENRING", true}); }
TEST(MpiTrainCp, RingMixedDocuments) { check_mix({1, world().size(), "RING", true}); }
TEST(MpiTrainCp, TokenRingMixedDocuments) { check_mix({1, world().size(), "TOKENRING", false}); }
TEST(MpiTrainCp, DataTimesContext) {
  if (world().size() != 4) GTEST_SKIP() << "needs 4 ranks";
  check_packed({2, 2, "RING", true});
  check_mix({2, 2, "TOKENRING", true});
}

// `train` on 2 x 2 against one process (LOCAL attention, 2x the tokens per micro-batch, 2x the
// micro-batches): the same global batches, losses and gradient norms per step.
TEST(MpiTrainCp, TrainDataTimesContextMatchesOneProcess) {
  parallel::Communicator& comm = world();
  if (comm.size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const fs::path dir = shared_dir(comm, "train");
  const std::vector<std::string> common = {"schedule.total_steps=5", "data.generate_if_missing=true"};
  if (comm.rank() == 0) {
    auto sets = common;
    sets.push_back("data.tokens_per_micro_batch=" + std::to_string(2 * kTokensPerMicroBatch));
    sets.push_back("data.grad_accumulation=4");
    trainer::train(cp_config(dir, "single", {1, 1, "LOCAL", true}, sets), "test", "");
  }
  comm.barrier();
  auto sets = common;
  sets.push_back("data.grad_accumulation=2");
  const config::RunConfig cfg = cp_config(dir, "dpcp", {2, 2, "RING", true}, sets);
  const auto group = trainer::make_parallel_group(comm, cfg, 4096);
  const trainer::TrainResult r = trainer::train(cfg, "test", "", *group);
  EXPECT_EQ(r.steps, 5u);
  EXPECT_EQ(r.evaluated, comm.rank() == 0) << "the writer evaluates (on a LOCAL copy of the model)";
  comm.barrier();
  if (comm.rank() == 0) {
    const auto lines = [](const fs::path& p) {
      std::vector<nlohmann::json> out;
      std::ifstream in(p);
      for (std::string line; std::getline(in, line);) {
        auto j = nlohmann::json::parse(line);
        if (!j.contains("eval")) out.push_back(j);
      }
      return out;
    };
    const auto a = lines(dir / "dpcp" / "metrics.jsonl"), b = lines(dir / "single" / "metrics.jsonl");
    ASSERT_EQ(a.size(), 5u);
    ASSERT_EQ(b.size(), 5u);
    for (size_t i = 0; i < 5; ++i) {
      EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]) << "step " << i + 1;
      for (const char* key : {"loss", "grad_norm"}) {
        const double x = a[i][key].get<double>(), y = b[i][key].get<double>();
        EXPECT_LE(std::abs(x - y), 1e-5 * std::abs(y)) << key << ", step " << i + 1 << ": " << x << " vs " << y;
      }
    }
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace cadtrain
