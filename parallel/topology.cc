// Parallel dims, the rank formula and the groups (parallel/topology.h).
#include "parallel/topology.h"

#include <fmt/format.h>

#include <cstdlib>

#include "configs/config.h"

namespace cadtrain::parallel {

std::string ParallelDims::describe() const {
  std::string out = fmt::format("parallel.data_parallel ({}) x parallel.context_parallel ({})", data_parallel,
                                context_parallel);
  if (dedicated_servers > 0) out += fmt::format(" + attention.cad.dedicated_servers ({})", dedicated_servers);
  return out + fmt::format(" = {} ranks", trainer_ranks() + dedicated_servers);
}

void ParallelDims::validate() const {
  if (data_parallel < 1 || context_parallel < 1 || dedicated_servers < 0) {
    fail("invalid parallel layout: parallel.data_parallel ({}) and parallel.context_parallel ({}) must be >= 1 and "
         "attention.cad.dedicated_servers ({}) >= 0",
         data_parallel, context_parallel, dedicated_servers);
  }
  if (static_cast<int64_t>(data_parallel) * context_parallel + dedicated_servers != world_size) {
    fail("the launch has world size {} but the layout needs {}", world_size, describe());
  }
}

ParallelDims ParallelDims::from_config(const config::RunConfig& cfg, int world_size) {
  ParallelDims d;
  d.data_parallel = static_cast<int>(cfg.parallel().data_parallel());
  d.context_parallel = static_cast<int>(cfg.parallel().context_parallel());
  const bool dedicated = cfg.attention().strategy() == config::CAD && cfg.attention().cad().mode() == config::DEDICATED;
  d.dedicated_servers = dedicated ? static_cast<int>(cfg.attention().cad().dedicated_servers()) : 0;
  d.world_size = world_size;
  if (cfg.parallel().world_size() != 0 && static_cast<int>(cfg.parallel().world_size()) != world_size) {
    fail("the launch has world size {} but parallel.world_size is {}", world_size, cfg.parallel().world_size());
  }
  d.validate();
  return d;
}

RankCoord ParallelDims::coord(int world_rank) const {
  CADTRAIN_CHECK(world_rank >= 0 && world_rank < world_size, "world rank {} is outside [0, {})", world_rank,
                 world_size);
  RankCoord c;
  if (world_rank < trainer_ranks()) {
    c.dp_index = world_rank / context_parallel;
    c.cp_index = world_rank % context_parallel;
  } else {
    c.role = Role::ATTENTION_SERVER;
    c.server_index = world_rank - trainer_ranks();
  }
  return c;
}

int ParallelDims::trainer_rank(int dp_index, int cp_index) const {
  CADTRAIN_CHECK(dp_index >= 0 && dp_index < data_parallel && cp_index >= 0 && cp_index < context_parallel,
                 "(dp index {}, cp index {}) is outside the layout {}", dp_index, cp_index, describe());
  return dp_index * context_parallel + cp_index;
}

int ParallelDims::server_rank(int server_index) const {
  CADTRAIN_CHECK(server_index >= 0 && server_index < dedicated_servers, "attention server {} is outside the layout {}",
                 server_index, describe());
  return trainer_ranks() + server_index;
}

int threads_per_rank(int configured, const char* omp_num_threads_env, const NodeInfo& node) {
  if (configured > 0) return configured;
  if (omp_num_threads_env != nullptr) {
    const int env = std::atoi(omp_num_threads_env);
    if (env > 0) return env;
  }
  return std::max(1, node.cores / std::max(1, node.local_size));
}

Topology::Topology(Communicator& world, const ParallelDims& dims) : world_(world), dims_(dims) {
  dims_.validate();
  CADTRAIN_CHECK(world.size() == dims.world_size, "{}: topology for {} on a communicator of {} ranks",
                 world.watchdog().identity().describe(), dims.describe(), world.size());
  coord_ = dims_.coord(world.rank());
  // Servers take colors past every trainer color, so each is a group of its own in dp and cp.
  const int solo = std::max(dims_.data_parallel, dims_.context_parallel) + 1 + coord_.server_index;
  role_group_ = world.split(is_trainer() ? 0 : 1, world.rank(), is_trainer() ? "trainers" : "servers");
  dp_ = world.split(is_trainer() ? coord_.cp_index : solo, coord_.dp_index,
                    is_trainer() ? fmt::format("dp (cp index {})", coord_.cp_index) : "server (no dp)");
  cp_ = world.split(is_trainer() ? coord_.dp_index : solo, coord_.cp_index,
                    is_trainer() ? fmt::format("cp (dp index {})", coord_.dp_index) : "server (no cp)");
}

Communicator& Topology::dp() const {
  CADTRAIN_CHECK(is_trainer(), "{}: attention server {} has no data-parallel group",
                 world_.watchdog().identity().describe(), coord_.server_index);
  return *dp_;
}

Communicator& Topology::cp() const {
  CADTRAIN_CHECK(is_trainer(), "{}: attention server {} has no context-parallel group",
                 world_.watchdog().identity().describe(), coord_.server_index);
  return *cp_;
}

}  // namespace cadtrain::parallel
