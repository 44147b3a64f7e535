// The communication-aware scheduler of DESIGN section 5.
//
// Start: every task on its home server (INPLACE: its owner rank, where its Q and local KV are
// free; DEDICATED: server owner * servers / trainers, which keeps a trainer's documents together).
// Target F = total cost / servers. While a server is outside [(1-eps)F, (1+eps)F]: take the most
// loaded server that can still give, the least loaded server, and move up to
// min(load_src - F, (1+eps)F - load_dst) of cost between them: the whole task, or the head or tail
// of a query shard split at split_rows, whose move adds the fewest bytes per unit of cost moved
// among the moves of at least half the largest cost that fits (small moves first would strand the
// expensive pieces where no gap can take them) (KV
// already on the destination, or already sent there for another task, is free; what the source no
// longer needs is subtracted). Every move lowers the sum of squared deviations from F, so it ends;
// ties break by server and task index, so the result depends only on the batch and options.
// Pieces of one shard that end on the same server are joined again. If the moves get stuck (an
// expensive piece stranded where no gap can take it), the balancer starts again from a
// largest-first placement that ignores locality and keeps the better of the two.
// When balance within eps is impossible the result says why (an indivisible piece above
// (1+eps)F, fewer pieces than servers, ...) instead of pretending.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention_servers/cost_model.h"
#include "attention_servers/tasks.h"

namespace cadtrain::attention_servers {

struct SchedulerOptions {
  uint32_t servers = 1;
  bool dedicated = false;  // false: INPLACE, servers must equal the trainer ranks
  double tolerance = 0.1;  // eps
  int64_t split_rows = 128;  // a shard splits only at multiples of this many rows from its start
  RowBytes bytes;          // per-row sizes for the bytes-per-cost choice
  uint64_t max_moves = 0;  // 0: 64 * (tasks + servers)
};

struct Schedule {
  TaskSet set;                   // the input's tasks, some split (same rows, same total pairs)
  std::vector<uint32_t> server;  // [tasks] server index of every task
  std::vector<double> cost;      // [tasks]
  std::vector<double> load;      // [servers]
  uint32_t trainer_ranks = 0;
  bool dedicated = false;
  double target = 0;             // F
  double tolerance = 0;
  bool balanced = false;         // every server within tolerance of F
  std::string reason;            // why not, when !balanced
  uint64_t moves = 0, splits = 0;
  int64_t shard_rows = 0;        // longest input task: merged pieces never exceed it

  uint32_t servers() const { return static_cast<uint32_t>(load.size()); }
  // World rank of server s: s (INPLACE) or trainer_ranks + s (DEDICATED).
  uint32_t server_rank(uint32_t s) const { return dedicated ? trainer_ranks + s : s; }
  double imbalance() const;  // max load / mean load (1 when there is no work)
};

// Throws cadtrain::Error for options that cannot describe a layout (no servers, INPLACE with
// servers != trainer ranks, split_rows < 1, negative tolerance).
Schedule schedule_tasks(TaskSet set, const CostModel& cost, const SchedulerOptions& options);

}  // namespace cadtrain::attention_servers
