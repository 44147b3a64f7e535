// Context-parallel core attention per layer: ring attention vs TokenRing on P ranks (zigzag
// shards of one packed micro-batch), forward + backward, beside the single-process fused task
// attention on the whole micro-batch measured in the same run (on rank 0, before the ranks start)
// divided by P: the time a rank would take with perfect splitting and free communication. Also
// the bytes each rank sends per layer (counted by the strategies) per token it holds.
//
//   mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 build/bench/cp_attention_bench
//          [--tokens N] [--doc D] [--heads H] [--kv-heads K] [--dim D] [--iters I]
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "common/clock.h"
#include "common/rng.h"
#include "kernels/core_attention.h"
#include "parallel/context_shard.h"
#include "parallel/mpi_runtime.h"
#include "parallel/ring_attention.h"
#include "parallel/token_ring.h"

using namespace cadtrain;

namespace {

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

struct Timing {
  double ms = 0;
  parallel::RingTraffic traffic;
};

}  // namespace

int main(int argc, char** argv) {
  parallel::MpiRuntime mpi(&argc, &argv);
  int64_t tokens = 8192, doc = 2048, heads = 8, kv_heads = 8, dim = 64;
  int iters = 3;
  CLI::App app("context-parallel attention: ring vs TokenRing per layer");
  app.add_option("--tokens", tokens, "tokens of the global micro-batch");
  app.add_option("--doc", doc, "document length (the micro-batch is packed with documents of this length)");
  app.add_option("--heads", heads, "query heads");
  app.add_option("--kv-heads", kv_heads, "key/value heads");
  app.add_option("--dim", dim, "head dimension");
  app.add_option("--iters", iters, "timed iterations (best of)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    auto world = mpi.world(300);
    const int P = world->size(), r = world->rank();
    std::vector<int32_t> cu = {0};
    std::vector<uint64_t> docs;
    std::vector<int32_t> pos;
    while (cu.back() < tokens) {
      cu.push_back(static_cast<int32_t>(std::min<int64_t>(cu.back() + doc, tokens)));
      docs.push_back(docs.size());
      pos.push_back(0);
    }
    const kernels::SequenceLayout global{cu.data(), static_cast<int64_t>(docs.size()), pos.data(), docs.data()};
    const int64_t qd = heads * dim, kvd = kv_heads * dim;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));

    // Reference: the whole micro-batch on one rank, one process's work / P.
    double local_ms = 0;
    if (r == 0) {
      const auto q = randn(static_cast<size_t>(tokens * qd), 1), k = randn(static_cast<size_t>(tokens * kvd), 2),
                 v = randn(static_cast<size_t>(tokens * kvd), 3), dout = randn(static_cast<size_t>(tokens * qd), 4);
      std::vector<float> o(q.size()), lse(static_cast<size_t>(tokens * heads)), dq(q.size()), dk(k.size()), dv(k.size());
      const auto attn = kernels::make_local_task_attention();
      const kernels::AttentionShape shape{tokens, heads, kv_heads, dim, scale};
      double best = 1e30;
      for (int it = 0; it <= iters; ++it) {
        const double t0 = now_seconds();
        kernels::attention_forward_all(*attn, o.data(), lse.data(), q.data(), k.data(), v.data(), shape, global);
        kernels::attention_backward_all(*attn, dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                        v.data(), o.data(), lse.data(), shape, global);
        if (it > 0) best = std::min(best, now_seconds() - t0);
      }
      local_ms = best * 1e3;
    }
    world->barrier();

    const parallel::ContextShard shard = parallel::shard_for_context_rank(global, P, r, true);
    const auto m = static_cast<int64_t>(shard.rows.size());
    const auto q = randn(static_cast<size_t>(m * qd), 10 + r), k = randn(static_cast<size_t>(m * kvd), 20 + r),
               v = randn(static_cast<size_t>(m * kvd), 30 + r), dout = randn(static_cast<size_t>(m * qd), 40 + r);
    std::vector<float> o(q.size()), lse(static_cast<size_t>(m * heads)), dq(q.size()), dk(k.size()), dv(k.size());
    const kernels::AttentionShape shape{m, heads, kv_heads, dim, scale};
    const kernels::RowRange all{0, m};
    Timing results[2];
    for (int si = 0; si < 2; ++si) {
      std::unique_ptr<kernels::CoreAttention> attn;
      if (si == 0) {
        attn = std::make_unique<parallel::RingAttention>(*world);
      } else {
        attn = std::make_unique<parallel::TokenRingAttention>(*world);
      }
      double best = 1e30;
      for (int it = 0; it <= iters; ++it) {
        world->barrier();
        const double t0 = now_seconds();
        const auto plan = attn->prepare(shape, shard.layout(), std::span(&all, 1));
        const kernels::AttentionIO io{q.data(), k.data(), v.data(), o.data(), lse.data()};
        auto fwd = attn->forward(0, *plan, 0, io);
        fwd->wait();
        std::fill(dk.begin(), dk.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        attn->backward(0, *plan, 0, *fwd, io, {dout.data(), dq.data(), dk.data(), dv.data()})->wait();
        double dt = now_seconds() - t0;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);  // the slowest rank
        if (it > 0) best = std::min(best, dt);
      }
      results[si].ms = best * 1e3;
      results[si].traffic = si == 0 ? static_cast<parallel::RingAttention&>(*attn).traffic(0)
                                    : static_cast<parallel::TokenRingAttention&>(*attn).traffic(0);
    }
    uint64_t bytes[2] = {results[0].traffic.forward_bytes + results[0].traffic.backward_bytes,
                         results[1].traffic.forward_bytes + results[1].traffic.backward_bytes};
    MPI_Allreduce(MPI_IN_PLACE, bytes, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (r == 0) {
      std::printf("| P | tokens | doc | heads (kv) | D | strategy | fwd+bwd ms/layer | 1-process ms / P | ratio | "
                  "bytes sent per token (fwd+bwd) |\n|---|---|---|---|---|---|---|---|---|---|\n");
      const char* names[2] = {"ring", "TokenRing"};
      for (int si = 0; si < 2; ++si) {
        std::printf("| %d | %ld | %ld | %ld (%ld) | %ld | %s | %.1f | %.1f | %.2f | %.0f |\n", P,
                    static_cast<long>(tokens), static_cast<long>(doc), static_cast<long>(heads),
                    static_cast<long>(kv_heads), static_cast<long>(dim), names[si], results[si].ms, local_ms / P,
                    results[si].ms / (local_ms / P), static_cast<double>(bytes[si]) / static_cast<double>(tokens));
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cp_attention_bench: %s\n", e.what());
    mpi.abort_job(1);
  }
  return 0;
}
