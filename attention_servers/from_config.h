// Scheduler options and cost model of a run config (attention.cad, model shape, device dtype).
#pragma once

#include "attention_servers/cost_model.h"
#include "attention_servers/scheduler.h"
#include "configs/cadtrain.pb.h"

namespace cadtrain::attention_servers {

// Bytes per element on the wire: fp32 on CPU, bf16 on CUDA (DESIGN section 2).
int64_t dtype_bytes(const config::RunConfig& cfg);
RowBytes row_bytes(const config::RunConfig& cfg);
// servers: the trainer ranks (INPLACE) or attention.cad.dedicated_servers (DEDICATED).
SchedulerOptions scheduler_options(const config::RunConfig& cfg);
// Pairs, or the calibration table when attention.cad.calibrate_cost is set.
CostModel cost_model(const config::RunConfig& cfg);

}  // namespace cadtrain::attention_servers
