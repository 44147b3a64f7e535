// The CAD runtime's plan of one micro-batch: every trainer rank's layout (gathered by
// CadAttention::prepare), cut into groups that the model's nano-batch calls can run, each group
// scheduled by the scheduler (scheduler.h) into an attention_servers::AttentionPlan (plan.proto).
// Pure computation, no communication: every rank computes the same value from the same layouts.
//
// Groups: the model calls forward(layer, part) for parts 0, 1, ... and may only rely on K and V of
// parts 0..p being written at part p (kernels/core_attention.h). A task (query shard) runs in the
// group of the latest part that holds any row it reads: its own query rows, or a key row of its
// causal prefix on any trainer rank (a document split across ranks may have its head in rank 0's
// last part and its tail in rank 1's first part). Its backward runs at the backward call of the
// earliest query part of its group (the model calls backward for parts last to first, so every
// dO of the group is written by then, and waits on no backward handle before all are called).
// Sequences are cut at part boundaries first, so a task's query rows lie in one part.
//
// Documents: sequences with the same document id whose positions continue each other (on any
// ranks) are one attention document, their queries see the whole causal prefix; pieces that
// repeat or leave a gap in positions are separate documents (as LOCAL attention treats them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention_servers/cad_wire.h"
#include "attention_servers/cost_model.h"
#include "attention_servers/plan.pb.h"
#include "attention_servers/scheduler.h"
#include "attention_servers/tasks.h"
#include "kernels/attention_tasks.h"

namespace cadtrain::attention_servers {

// What one trainer rank holds: its sequences in stream order and its nano-batch parts.
struct RankLayout {
  std::vector<Sequence> seqs;
  std::vector<kernels::RowRange> parts;
  int64_t rows = 0;
};

struct CadGroup {
  AttentionPlan plan;        // the scheduler's plan of this group's tasks (server buffer rows)
  size_t forward_part = 0;   // runs at forward(layer, forward_part)
  size_t backward_part = 0;  // runs at backward(layer, backward_part)
  // segments[src][server]: the rows trainer rank src sends to server index `server`, in the
  // plan's dispatch order (what the descriptors list).
  std::vector<std::vector<std::vector<WireSegment>>> segments;
};

struct CadStepPlan {
  uint32_t trainers = 0, servers = 0;
  bool dedicated = false;
  std::vector<RankLayout> ranks;  // [trainers]
  size_t parts = 0;
  std::vector<CadGroup> groups;   // by forward_part
  double scheduler_seconds = 0;   // task formation, scheduling and plan building, this call
  kernels::AttentionDims dims;    // heads, head size and scale every rank runs with

  // World rank of server index s.
  int server_rank(uint32_t s) const { return static_cast<int>(dedicated ? trainers + s : s); }
  // Server index of a world rank, or -1 when it is no server.
  int server_index(int world_rank) const;
};

struct CadPlanOptions {
  int64_t shard_tokens = 128;
  SchedulerOptions scheduler;  // servers, mode, tolerance, split_rows, row bytes
  CostModel cost;
};

// Throws cadtrain::Error naming the rank for layouts that disagree on the number of parts, or
// parts that do not cover a rank's rows in order.
CadStepPlan plan_cad_step(std::vector<RankLayout> ranks, const CadPlanOptions& options);

// A 64-bit hash of the plan (FNV-1a over every group's serialized plan and parts), equal on every
// rank that computed the same plan.
uint64_t plan_hash(const CadStepPlan& plan);

// Bytes the plans say one layer moves over the wire (plan.proto PlanBytes, summed over groups).
struct CadPlanBytes {
  int64_t forward = 0, backward_keep = 0, backward_resend = 0;
};
CadPlanBytes plan_bytes(const CadStepPlan& plan);

}  // namespace cadtrain::attention_servers
