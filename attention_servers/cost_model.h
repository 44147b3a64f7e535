// What a core-attention task costs (DESIGN sections 3 and 5) and what moving it weighs in bytes.
//
// Cost is causal pairs (kernels::task_pairs). With a calibration table (measured kernel
// throughput per (query rows, key rows), written by bench/cad_calibrate and carried by a config in
// attention.cad.calibration) cost is "effective pairs": pairs * best_rate / rate(q, k), i.e. the
// time the task takes expressed in pairs at the table's best throughput, so that short tasks that
// run below peak cost more than their pairs. Either way cost / attention pair-rate = seconds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention_tasks.h"

namespace cadtrain::attention_servers {

// One measured point: a task of q query rows and k key rows (k >= q, ending on the diagonal) ran
// at pairs_per_s causal pairs per second.
struct CalibrationPoint {
  int64_t q = 0, k = 0;
  double pairs_per_s = 0;
};

class CostModel {
 public:
  CostModel() = default;  // causal pairs
  // Validates the table: positive sizes and rates, a full grid (every listed q with every listed
  // k where k >= q). `source` names it in errors (e.g. "attention.cad.calibration").
  CostModel(std::vector<CalibrationPoint> table, const std::string& source);

  bool calibrated() const { return !qs_.empty(); }
  double cost(const kernels::AttentionTask& task) const;
  // Throughput at (q, k): bilinear in (log q, log k) between grid points, clamped at the edges.
  double rate(int64_t q, int64_t k) const;
  double best_rate() const { return best_; }

 private:
  std::vector<int64_t> qs_, ks_;
  std::vector<double> rates_;  // [qs_.size() x ks_.size()], 0 where k < q (never looked up)
  double best_ = 0;
};

// Bytes of one row of each tensor that crosses the wire, for a model's attention shape.
struct RowBytes {
  int64_t q = 0;    // Q (and O, dO, dQ): q_heads * head_dim * dtype
  int64_t kv = 0;   // K and V together: 2 * kv_heads * head_dim * dtype
  int64_t lse = 0;  // LSE: q_heads * 4 (fp32 always)
  int64_t forward_query() const { return q; }     // Q out
  int64_t forward_return() const { return q + lse; }  // O and LSE back
};
RowBytes row_bytes(int64_t q_heads, int64_t kv_heads, int64_t head_dim, int64_t dtype_bytes);

}  // namespace cadtrain::attention_servers
