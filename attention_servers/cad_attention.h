// Core attention disaggregation (DESIGN section 5) as a kernels::CoreAttention: trainer ranks keep
// everything but core attention; each layer's query shards and deduplicated K/V shards go to
// attention servers by all-to-all-v (cad_exchange.h), the servers run their tasks in one fused
// kernel call, and O, LSE (forward) or dQ, dK, dV (backward) come back.
//
// Ranks of `world`: trainers 0 .. T-1 (the ranks that call prepare/forward/backward), then, in
// DEDICATED mode, servers T .. T+S-1 that own no parameters and run run_cad_server() until the
// trainers call shutdown_servers(). INPLACE: T = world size and every trainer is also a server.
//
// prepare() all-gathers every trainer's layout (two collectives) and runs the scheduler on every
// rank identically (cad_step_plan.h; deterministic, so every rank holds the same plan: plan_hash()
// tells, and the MPI tests compare it across ranks). forward(layer, part) runs the groups of that
// part (cad_step_plan.h says which part each task's group runs at) and returns a handle that is
// complete once every group holding this rank's queries of the part has run: the model calls
// every part's forward before waiting on any, as for ring attention (waiting earlier is an error,
// not a hang). The backward likewise, with KEEP_ON_SERVER (servers hold Q, K, V, O, LSE of the
// forward until the group's backward) or RESEND (trainers send them again).
// Every call is collective over `world`; in DEDICATED mode trainer rank 0's broadcast tells the
// servers which call comes next.
#pragma once

#include <cstdint>
#include <memory>

#include "attention_servers/cad_exchange.h"
#include "attention_servers/cad_metrics.h"
#include "attention_servers/cad_step_plan.h"
#include "kernels/core_attention.h"
#include "parallel/communicator.h"

namespace cadtrain::attention_servers {

struct CadRuntimeOptions {
  uint32_t trainers = 1;      // trainer ranks; DEDICATED servers are the ranks after them
  bool resend = false;        // backward mode RESEND (else KEEP_ON_SERVER)
  CadPlanOptions plan;        // shard size, scheduler options (servers, mode, tolerance), cost model
};

class CadAttention final : public kernels::CoreAttention {
 public:
  // world: trainers then servers (host memory); it must outlive this object. Throws when the
  // options do not fit the world size.
  CadAttention(parallel::Communicator& world, CadRuntimeOptions options);
  ~CadAttention() override;

  std::unique_ptr<kernels::AttentionPlan> prepare(const kernels::AttentionShape& shape,
                                                  const kernels::SequenceLayout& layout,
                                                  std::span<const kernels::RowRange> parts) override;
  std::unique_ptr<kernels::AttentionHandle> forward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                    const kernels::AttentionIO& io) override;
  std::unique_ptr<kernels::AttentionHandle> backward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                     kernels::AttentionHandle& forward, const kernels::AttentionIO& io,
                                                     const kernels::AttentionGrads& grads) override;

  // DEDICATED: ends run_cad_server() on every server rank (collective over world; call once, on
  // every trainer). INPLACE: nothing to do.
  void shutdown_servers();

  // The plan of the last prepare() (nullptr before the first).
  const CadStepPlan* last_plan() const { return last_plan_; }
  CadLayerTraffic traffic(int layer) const { return exchange_.traffic(layer); }
  // This rank's statistics since the last reset_stats() or end_step().
  const CadStats& stats() const;
  void reset_stats();
  // Collective over world (dedicated servers included): every rank's statistics since the last
  // call, summarised; then every rank starts counting afresh. Once per training step.
  CadStepMetrics end_step();

 private:
  parallel::Communicator& world_;
  CadRuntimeOptions options_;
  CadExchange exchange_;
  uint64_t serial_ = 0;
  const CadStepPlan* last_plan_ = nullptr;
  bool shut_down_ = false;
};

// The loop of a DEDICATED server rank: serves prepare, forward and backward calls as the trainers
// make them, until shutdown_servers(). Throws on a malformed descriptor (naming the sender) or a
// trainer that does not answer within the communicator's timeout. Returns its statistics.
CadStats run_cad_server(parallel::Communicator& world, const CadRuntimeOptions& options);

}  // namespace cadtrain::attention_servers
