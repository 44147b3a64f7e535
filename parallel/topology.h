// Topology: which group each rank belongs to, owned by one object (no module globals).
//
// Degrees: data_parallel (dp) x context_parallel (cp) trainer ranks, plus the attention-server
// pool's dedicated ranks (attention.cad.mode DEDICATED), which must add up to the world size.
//
// The rank formula (trainer ranks first, the context-parallel index fastest, so that a CP group,
// which talks every layer, sits on neighbouring ranks and hence on one node when it fits):
//   world_rank = dp_index * cp + cp_index              for trainers, 0 <= world_rank < dp * cp
//   world_rank = dp * cp + server_index                for dedicated attention servers
// Worked example, dp = 2, cp = 3, 2 dedicated servers, world size 8:
//   world rank   0  1  2 | 3  4  5 | 6   7
//   dp index     0  0  0 | 1  1  1 | -   -
//   cp index     0  1  2 | 0  1  2 | -   -
//   server       -  -  - | -  -  - | 0   1
//   cp groups {0,1,2} {3,4,5} (ring/TokenRing); dp groups {0,3} {1,4} {2,5} (gradient all-reduce);
//   trainers {0..5}; servers {6,7}.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "configs/cadtrain.pb.h"
#include "parallel/communicator.h"
#include "parallel/node_info.h"

namespace cadtrain::parallel {

enum class Role : uint8_t { TRAINER, ATTENTION_SERVER };

// Where one rank sits in the layout (indices that do not apply to its role are -1).
struct RankCoord {
  Role role = Role::TRAINER;
  int dp_index = -1, cp_index = -1, server_index = -1;
};

// The degrees of the layout, validated against the world size (torchtitan's ParallelDims).
struct ParallelDims {
  int data_parallel = 1;
  int context_parallel = 1;
  int dedicated_servers = 0;
  int world_size = 1;

  // Throws Error naming every factor unless data_parallel * context_parallel + dedicated_servers
  // == world_size and each degree is in range.
  void validate() const;
  // The degrees of cfg (parallel.data_parallel, parallel.context_parallel and, in DEDICATED mode,
  // attention.cad.dedicated_servers) on a launch of world_size ranks; validated.
  static ParallelDims from_config(const config::RunConfig& cfg, int world_size);

  int trainer_ranks() const { return data_parallel * context_parallel; }
  // The rank formula above, both ways.
  RankCoord coord(int world_rank) const;
  int trainer_rank(int dp_index, int cp_index) const;
  int server_rank(int server_index) const;
  // "dp 2 x cp 3 + 2 attention servers = 8 ranks"
  std::string describe() const;
};

// OpenMP threads for one rank: `configured` (parallel.threads) when > 0, else OMP_NUM_THREADS when
// `omp_num_threads_env` is set to a positive number, else cores / ranks on the node (at least 1).
int threads_per_rank(int configured, const char* omp_num_threads_env, const NodeInfo& node);

// The groups of one rank. Collective over `world`: every rank constructs it with the same dims.
class Topology {
 public:
  Topology(Communicator& world, const ParallelDims& dims);

  const ParallelDims& dims() const { return dims_; }
  const RankCoord& coord() const { return coord_; }
  bool is_trainer() const { return coord_.role == Role::TRAINER; }

  Communicator& world() const { return world_; }
  // Ranks of this rank's role: the dp * cp trainers, or the dedicated servers.
  Communicator& role_group() const { return *role_group_; }
  // Trainers only (throws for a server): the ranks sharing this rank's cp_index, which average
  // gradients, ordered by dp_index; and the ranks sharing its dp_index, which share sequences,
  // ordered by cp_index.
  Communicator& dp() const;
  Communicator& cp() const;

 private:
  Communicator& world_;
  ParallelDims dims_;
  RankCoord coord_;
  std::unique_ptr<Communicator> role_group_, dp_, cp_;
};

}  // namespace cadtrain::parallel
