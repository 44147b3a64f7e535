// One CAD group's round trip on the world communicator (DESIGN section 5, dispatch/return), for
// the trainer half and the server half of a rank at once (INPLACE ranks are both; DEDICATED ranks
// one of them). Each round is two all-to-all-v: descriptors (uint64, cad_wire.h) and payload
// (float32), there and back; every receiver checks every descriptor against the plan before it
// touches the payload.
//
// Payload of one segment (rows r of a dispatch), in order:
//   forward in:     QUERY: Q[r, Hq*D]                     KEY_VALUE: K[r, Hkv*D], V[r, Hkv*D]
//   forward out:    QUERY: O[r, Hq*D], LSE[r, Hq]         KEY_VALUE: -
//   backward in:    QUERY: (RESEND: Q, O, LSE), dO         KEY_VALUE: (RESEND: K, V)
//   backward out:   QUERY: dQ[r, Hq*D]                    KEY_VALUE: dK, dV (summed over the server's tasks)
// A server runs all its tasks in one fused kernel call (kernels::attention_forward_tasks /
// attention_backward_tasks); the trainer merges returned O and LSE into its rows by LSE
// (kernels::merge_attention_partials, exact) and adds dQ, dK, dV.
// Bytes on the wire (payload sent to other ranks) equal plan.proto's PlanBytes exactly.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "attention_servers/cad_step_plan.h"
#include "kernels/core_attention.h"
#include "parallel/communicator.h"

namespace cadtrain::attention_servers {

// What one rank did since CadAttention::reset_stats(): as a server (cost, tasks, busy), as a
// trainer and a server on the wire (bytes sent and received exclude copies to itself).
struct CadStats {
  double task_cost = 0;  // scheduler cost of the tasks this rank served (forward)
  uint64_t tasks = 0;
  double busy_s = 0;       // in the server's fused kernels
  double exchange_s = 0;   // in the all-to-all-v of dispatch and return (transfer and waiting)
  double scheduler_s = 0;  // planning in prepare()
  uint64_t bytes_sent = 0, bytes_received = 0;  // payload
  uint64_t forward_bytes_sent = 0, backward_bytes_sent = 0;  // bytes_sent by phase
  uint64_t descriptor_bytes = 0;                // descriptors sent to other ranks
  uint64_t kept_bytes = 0, kept_bytes_peak = 0; // KEEP_ON_SERVER state held between forward and backward
  uint64_t plan_hash = 0;                        // plan_hash() of the last micro-batch's plan
};

struct CadLayerTraffic {
  uint64_t forward_bytes = 0, backward_bytes = 0;  // payload this rank sent to other ranks
};

// The server state KEEP_ON_SERVER holds from a group's forward to its backward.
struct KeptTensors {
  std::vector<float> q, k, v, o, lse;
  uint64_t bytes() const { return 4 * (q.size() + k.size() + v.size() + o.size() + lse.size()); }
};

struct CadCall {
  const CadStepPlan* plan = nullptr;
  size_t group = 0;
  int layer = 0;
  uint64_t serial = 0;
  bool resend = false;  // backward mode RESEND (else KEEP_ON_SERVER)
};

class CadExchange {
 public:
  explicit CadExchange(parallel::Communicator& world) : world_(world) {}
  // io: this rank's tensors when it is a trainer (nullptr on a dedicated server).
  void forward(const CadCall& call, const kernels::AttentionIO* io);
  void backward(const CadCall& call, const kernels::AttentionIO* io, const kernels::AttentionGrads* grads);
  // Drops what KEEP_ON_SERVER holds (a new micro-batch).
  void drop_kept();

  CadStats& stats() { return stats_; }
  CadLayerTraffic traffic(int layer) const;

 private:
  parallel::Communicator& world_;
  std::map<std::pair<int, size_t>, KeptTensors> kept_;  // (layer, group)
  CadStats stats_;
  std::vector<CadLayerTraffic> traffic_;
  CadLayerTraffic& layer_traffic(int layer);
};

}  // namespace cadtrain::attention_servers
