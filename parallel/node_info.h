// NodeInfo: where this rank runs (MpiRuntime::node() fills it).
#pragma once

#include <string>

namespace cadtrain::parallel {

// This process's place on its node, found by MPI (ranks sharing memory), so it is right under
// mpirun, srun or any launcher, whatever its environment variables.
struct NodeInfo {
  int local_rank = 0;   // among the ranks on this node
  int local_size = 1;   // ranks on this node
  int node_index = 0;   // nodes numbered by their lowest world rank
  int node_count = 1;
  int cores = 1;        // online cores of the node
  std::string host;
};

}  // namespace cadtrain::parallel
