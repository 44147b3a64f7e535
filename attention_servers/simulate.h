// The planner's simulation (DESIGN section 8): one batch of documents, every strategy, per-rank
// attention and linear time, memory, bytes and exposed communication, and the step time each
// strategy predicts. CAD runs the real scheduler (scheduler.h) and counts bytes from its plan.
//
// A simulated rank is one tensor-parallel group of cluster GPUs (planner.tensor_parallel): its
// FLOP/s, HBM and network bandwidth are tensor_parallel times one GPU's. Assumptions the output
// repeats: linear layers run at dense_flops * linear_efficiency; core attention at attention_flops
// (per pair: 4 * head_dim * q_heads FLOPs forward, 2.5x that backward); the gradient all-reduce and
// optimizer step are the same for every strategy and left out; model states take 16 bytes per
// parameter sharded over all GPUs (ZeRO-3); per-document CP all-gathers K/V before attention and
// reduce-scatters dK/dV after it without overlap; ring and TokenRing overlap each step's transfer
// with that step's compute; with ping-pong, CAD hides a layer's transfers behind the other
// nano-batch's compute of that layer (linear layers, and core attention on a rank that serves);
// an all-to-all finishes when its busiest rank finishes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention_servers/cost_model.h"
#include "configs/cadtrain.pb.h"

namespace cadtrain::attention_servers {

struct RankFigures {
  std::string role = "trainer";  // "trainer", "server" (DEDICATED pool) or "trainer+server"
  double tokens = 0;
  double attention_s = 0, linear_s = 0;
  double memory_bytes = 0;
  double bytes_sent = 0, bytes_received = 0;  // per step, all layers
  double comm_s = 0;                          // time its transfers take, all layers
  double exposed_comm_s = 0;                  // of which not hidden behind compute
  double busy_s() const { return attention_s + linear_s; }
};

struct StrategyResult {
  std::string strategy;
  uint32_t servers = 0;  // CAD: attention servers
  std::vector<RankFigures> ranks;
  double compute_imbalance = 1, idle_fraction = 0, exposed_comm_fraction = 0, step_time_s = 0;
  double speedup_vs_packing = 1;
  double bytes_moved = 0;           // all ranks, per step
  double bytes_forward = 0;          // CAD: forward dispatch + return bytes, all layers (ours)
  double bytes_published_count = 0;  // CAD: the same, counted the published way (local K/V charged)
  bool balanced = true;             // CAD: the scheduler met its tolerance
  bool fits_memory = true;          // every rank's memory within its HBM
  std::string note;
};

// Everything the simulation needs from the config, derived once.
struct Machine {
  uint32_t gpus = 0, tp = 1, ranks = 0, ranks_per_node = 1;
  double linear_flops = 0, attention_flops = 0;  // per rank
  double hbm = 0;                                // per rank
  double bw_intra = 0, bw_inter = 0, lat_intra = 0, lat_inter = 0;  // per rank
  double linear_flops_per_token = 0;  // forward + backward, all layers, LM head included
  double attention_flops_per_pair = 0;  // forward + backward, all layers
  double activation_bytes_per_token = 0;  // all layers, on one rank
  double state_bytes_per_rank = 0;
  int64_t layers = 0;
  RowBytes row;           // per-row wire sizes of one layer's Q, K+V, LSE
  int64_t tokens_per_rank = 0;
  uint32_t cp_degree = 0;
};

// Throws cadtrain::Error naming the field when the cluster cannot hold the model and a micro-batch
// of activations (or the layout does not divide).
Machine describe_machine(const config::RunConfig& cfg);

// All strategies on one batch (document lengths, global tokens = ranks * tokens_per_rank).
// pool_sizes: DEDICATED pool sizes (servers) to try; the best is reported as "cad_dedicated".
std::vector<StrategyResult> simulate_batch(const config::RunConfig& cfg, const Machine& m, const CostModel& cost,
                                           const std::vector<int64_t>& docs, const std::vector<uint32_t>& pool_sizes);

}  // namespace cadtrain::attention_servers
