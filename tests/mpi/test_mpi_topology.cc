// Topology under mpirun: the groups hold the ranks the rank formula says, in its order, and the
// node discovery finds one node holding every rank (mpirun on one machine).
#include <gtest/gtest.h>

#include <vector>

#include "parallel/topology.h"
#include "tests/mpi/mpi_test_main.h"

namespace cadtrain::parallel {
namespace {

// World ranks of every member of c, gathered over c.
std::vector<int32_t> members(Communicator& c) {
  const std::vector<int32_t> me{c.watchdog().identity().world_rank};
  std::vector<int32_t> all(static_cast<size_t>(c.size()));
  c.all_gather(host_view(me), host_view(all));
  for (int r = 0; r < c.size(); ++r) EXPECT_EQ(all[static_cast<size_t>(r)], c.world_rank(r));
  return all;
}

TEST(MpiTopology, GroupsFollowTheRankFormula) {
  Communicator& w = test::world();
  // Every layout of this world size: dp x cp trainers, with 0 or 1 dedicated servers.
  for (int servers = 0; servers <= 1; ++servers) {
    const int trainers = w.size() - servers;
    for (int cp = 1; cp <= trainers; ++cp) {
      if (trainers % cp != 0) continue;
      const ParallelDims dims{trainers / cp, cp, servers, w.size()};
      Topology t(w, dims);
      const RankCoord c = dims.coord(w.rank());
      EXPECT_EQ(t.coord().role, c.role);
      EXPECT_EQ(t.role_group().size(), t.is_trainer() ? trainers : servers);
      if (!t.is_trainer()) {
        EXPECT_THROW(t.dp(), Error);
        continue;
      }
      std::vector<int32_t> expect_dp, expect_cp;
      for (int d = 0; d < dims.data_parallel; ++d) expect_dp.push_back(dims.trainer_rank(d, c.cp_index));
      for (int k = 0; k < dims.context_parallel; ++k) expect_cp.push_back(dims.trainer_rank(c.dp_index, k));
      EXPECT_EQ(members(t.dp()), expect_dp) << dims.describe();
      EXPECT_EQ(members(t.cp()), expect_cp) << dims.describe();
      EXPECT_EQ(t.dp().rank(), c.dp_index);
      EXPECT_EQ(t.cp().rank(), c.cp_index);
    }
  }
  w.barrier();
}

TEST(MpiTopology, OneNodeHoldsEveryRank) {
  const NodeInfo& n = test::runtime().node();
  EXPECT_EQ(n.node_count, 1);
  EXPECT_EQ(n.node_index, 0);
  EXPECT_EQ(n.local_size, test::world().size());
  EXPECT_EQ(n.local_rank, test::world().rank());
  EXPECT_GE(n.cores, 1);
}

}  // namespace
}  // namespace cadtrain::parallel
