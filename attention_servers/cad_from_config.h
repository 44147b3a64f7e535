// The CAD runtime's options from a run config (attention.cad, the model's attention shape, the
// parallel layout): what `cadtrain train` passes to CadAttention and run_cad_server.
#pragma once

#include "attention_servers/cad_attention.h"
#include "configs/cadtrain.pb.h"

namespace cadtrain::attention_servers {

// trainers = parallel.data_parallel x context_parallel; servers = trainers (INPLACE) or
// attention.cad.dedicated_servers (DEDICATED, world ranks after the trainers).
CadRuntimeOptions cad_runtime_options(const config::RunConfig& cfg);

}  // namespace cadtrain::attention_servers
