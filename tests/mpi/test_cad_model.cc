// The model on CAD attention under mpirun against the model on LOCAL attention in one process,
// for one global micro-batch: the trainer ranks each hold a contiguous slice of its rows (a
// document runs across ranks with its true positions; at P = 4 a rank holds only tiny documents),
// run Model::forward_backward with CadAttention (1 or 2 nano-batches, activation recomputation on
// or off, both backward modes, in place or with a dedicated server), and the sum over trainers of
// their loss and of every parameter gradient must equal the single process's (the gradient sum
// is what data-parallel synchronisation leaves, trainer/grad_sync.h; here the test sums itself).
// Tolerance: loss 1e-6 relative; gradients 5e-5 relative per element against max(|ref|, rms(ref))
// (the sum over ranks adds in another order than one process's accumulation).
// Attention layers only: a short convolution crosses the rank boundary of a split document,
// which no strategy here exchanges.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "attention_servers/cad_attention.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "tests/mpi/mpi_test_main.h"
#include "trainer/batch.h"
#include "trainer/model.h"

namespace cadtrain {
namespace {

using test::world;

struct ModelCase {
  int parts = 1;
  bool recompute = false;
  bool resend = false;
  uint32_t dedicated = 0;
};

config::ModelConfig attention_model(bool recompute) {
  config::ModelConfig m = test::small_model_config(true, false);
  m.clear_layer_kinds();  // every layer attention
  m.set_recompute_activations(recompute);
  return m;
}

// Rows [r0, r1) of a micro-batch, sequences cut at the ends with their true positions.
data::MicroBatch slice(const data::MicroBatch& g, int64_t r0, int64_t r1) {
  data::MicroBatch b;
  b.tokens.assign(g.tokens.begin() + r0, g.tokens.begin() + r1);
  b.targets.assign(g.targets.begin() + r0, g.targets.begin() + r1);
  b.loss_mask.assign(g.loss_mask.begin() + r0, g.loss_mask.begin() + r1);
  b.positions.assign(g.positions.begin() + r0, g.positions.begin() + r1);
  b.cu_seqlens = {0};
  for (size_t s = 0; s + 1 < g.cu_seqlens.size(); ++s) {
    const int64_t a = std::max<int64_t>(g.cu_seqlens[s], r0), e = std::min<int64_t>(g.cu_seqlens[s + 1], r1);
    if (a >= e) continue;
    b.cu_seqlens.push_back(static_cast<int32_t>(e - r0));
    b.doc_ids.push_back(g.doc_ids[s]);
  }
  return b;
}

void check_model(const ModelCase& c) {
  parallel::Communicator& comm = world();
  const int W = comm.size(), me = comm.rank();
  if (c.dedicated >= static_cast<uint32_t>(W)) GTEST_SKIP();
  const auto T = static_cast<uint32_t>(W) - c.dedicated;
  const config::ModelConfig mcfg = attention_model(c.recompute);
  attention_servers::CadRuntimeOptions opts;
  opts.trainers = T;
  opts.resend = c.resend;
  opts.plan.shard_tokens = 24;
  opts.plan.scheduler.servers = c.dedicated > 0 ? c.dedicated : T;
  opts.plan.scheduler.dedicated = c.dedicated > 0;
  opts.plan.scheduler.split_rows = 8;
  opts.plan.scheduler.bytes = attention_servers::row_bytes(mcfg.n_heads(), mcfg.n_kv_heads(),
                                                           mcfg.d_model() / mcfg.n_heads(), 4);
  const bool trainer = me < static_cast<int>(T);
  auto trainers = comm.split(trainer ? 0 : 1, me, trainer ? "trainers" : "servers");
  if (!trainer) {
    attention_servers::run_cad_server(comm, opts);
    return;
  }
  const std::string what = "rank " + std::to_string(me) + "/" + std::to_string(W) + ", " + std::to_string(c.parts) +
                           " parts" + (c.recompute ? ", recompute" : "") + (c.resend ? ", RESEND" : ", KEEP") +
                           (c.dedicated > 0 ? ", dedicated" : ", in place") + ": ";

  // The global micro-batch: a 90-token document (longer than a rank's share), a document tail
  // starting at position 30, tiny documents.
  data::MicroBatch g = test::make_batch({90, 25, 1, 3, 2, 47}, mcfg.vocab_size(), 5);
  for (size_t s = 0; s + 1 < g.cu_seqlens.size(); ++s) {
    g.doc_ids.push_back(500 + s);
    if (s == 1) {
      for (int32_t i = g.cu_seqlens[s]; i < g.cu_seqlens[s + 1]; ++i) g.positions[static_cast<size_t>(i)] += 30;
    }
  }
  const auto n = static_cast<int64_t>(g.tokens.size());

  // Reference: one process, LOCAL attention, the whole micro-batch.
  const auto backend = kernels::make_cpu_backend();
  const auto local = kernels::make_local_task_attention();
  trainer::Model ref(mcfg, n, *backend, *local);
  ref.init_weights(9);
  const trainer::LossSum ref_loss = ref.forward_backward(trainer::batch_view(g), 1.0f);
  const size_t np = ref.params().total();
  std::vector<float> ref_grads(np);
  backend->copy(ref_grads.data(), ref.params().grads(), np);

  // This trainer's slice on CAD attention.
  const int64_t r0 = n * me / static_cast<int64_t>(T), r1 = n * (me + 1) / static_cast<int64_t>(T);
  const data::MicroBatch mine = slice(g, r0, r1);
  attention_servers::CadAttention cad(comm, opts);
  trainer::Model model(mcfg, std::max<int64_t>(r1 - r0, 1), *backend, cad);
  model.init_weights(9);
  model.set_nano_batches(c.parts);
  const trainer::LossSum loss = model.forward_backward(trainer::batch_view(mine), 1.0f);
  std::vector<float> grads(np);
  backend->copy(grads.data(), model.params().grads(), np);
  cad.shutdown_servers();

  std::vector<double> sums = {loss.loss_sum, loss.weight_sum};
  trainers->all_reduce(host_view(sums), parallel::ReduceOp::SUM);
  trainers->all_reduce(host_view(grads), parallel::ReduceOp::SUM);
  EXPECT_NEAR(sums[0], ref_loss.loss_sum, 1e-6 * std::abs(ref_loss.loss_sum)) << what << "loss";
  EXPECT_EQ(sums[1], ref_loss.weight_sum) << what << "loss weight";
  test::expect_close(grads, test::to_double(ref_grads), 5e-5, what + "gradients");
}

TEST(CadModel, InPlaceReproducesTheSingleProcessLossAndGradients) {
  check_model({1, false, false, 0});
  check_model({2, false, false, 0});
  check_model({2, true, true, 0});
}

TEST(CadModel, DedicatedServerReproducesTheSingleProcessLossAndGradients) {
  check_model({1, false, false, 1});
  check_model({2, true, true, 1});
}

}  // namespace
}  // namespace cadtrain
