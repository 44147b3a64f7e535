// CAD runtime options from a run config (see cad_from_config.h).
#include "attention_servers/cad_from_config.h"

#include "attention_servers/from_config.h"
#include "configs/config.h"

namespace cadtrain::attention_servers {

CadRuntimeOptions cad_runtime_options(const config::RunConfig& cfg) {
  CadRuntimeOptions o;
  o.trainers = config::trainer_ranks(cfg);
  o.resend = cfg.attention().cad().backward() == config::RESEND;
  o.plan.shard_tokens = cfg.attention().cad().shard_tokens();
  o.plan.scheduler = scheduler_options(cfg);
  o.plan.cost = cost_model(cfg);
  return o;
}

}  // namespace cadtrain::attention_servers
