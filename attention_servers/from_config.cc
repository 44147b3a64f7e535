#include "attention_servers/from_config.h"

#include <algorithm>

#include "configs/config.h"

namespace cadtrain::attention_servers {

int64_t dtype_bytes(const config::RunConfig& cfg) { return cfg.device() == config::CUDA ? 2 : 4; }

RowBytes row_bytes(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  return row_bytes(m.n_heads(), config::kv_heads(m), config::head_dim(m), dtype_bytes(cfg));
}

SchedulerOptions scheduler_options(const config::RunConfig& cfg) {
  const auto& cad = cfg.attention().cad();
  SchedulerOptions o;
  o.dedicated = cad.mode() == config::DEDICATED;
  o.servers = o.dedicated ? cad.dedicated_servers() : config::trainer_ranks(cfg);
  o.tolerance = cad.tolerance();
  o.split_rows = cad.split_rows() != 0 ? cad.split_rows() : std::min<int64_t>(128, cad.shard_tokens());
  o.bytes = row_bytes(cfg);
  return o;
}

CostModel cost_model(const config::RunConfig& cfg) {
  const auto& cad = cfg.attention().cad();
  if (!cad.calibrate_cost()) return CostModel();
  std::vector<CalibrationPoint> table;
  for (const auto& p : cad.calibration()) {
    table.push_back({static_cast<int64_t>(p.q()), static_cast<int64_t>(p.k()), p.pairs_per_s()});
  }
  return CostModel(std::move(table), "attention.cad.calibration");
}

}  // namespace cadtrain::attention_servers
