// Per-server CAD metrics of one step (issue 11, "metrics every step"): every rank's CadStats
// gathered (CadAttention::gather_stats), reduced to what a step line and metrics.jsonl show.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "attention_servers/cad_exchange.h"

namespace cadtrain::attention_servers {

struct CadStepMetrics {
  std::vector<CadStats> ranks;  // by world rank
  std::vector<int> servers;     // world ranks that served (all in INPLACE)
  double cost_imbalance = 1;    // max / mean task cost over servers
  double busy_imbalance = 1;    // max / mean busy time over servers
  double busy_max_s = 0, busy_mean_s = 0;
  double idle_max_s = 0;        // per server: time in the exchanges (waiting and transfer)
  uint64_t bytes_sent = 0;      // payload over the wire, all ranks
  uint64_t descriptor_bytes = 0;
  double scheduler_s = 0;       // max over ranks
  uint64_t kept_bytes_peak = 0; // max over servers (KEEP_ON_SERVER memory)
};

// servers: the world ranks that are servers (INPLACE: every rank).
CadStepMetrics summarize_cad_stats(std::vector<CadStats> ranks, std::vector<int> servers);

// "cad imb 1.04/1.10 busy 12.1ms idle 3.2ms 1.2MB sched 0.4ms": cost/busy imbalance, max busy,
// max idle, bytes on the wire, scheduler time.
std::string cad_step_line(const CadStepMetrics& m);

// Every figure, per server and summed (metrics.jsonl's "cad" object).
nlohmann::json cad_step_json(const CadStepMetrics& m);

}  // namespace cadtrain::attention_servers
