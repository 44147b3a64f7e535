// parallel/topology.h without MPI: the rank formula, validation messages naming every factor,
// the layout from a config, and threads per rank. (The groups: tests/mpi/test_mpi_topology.cc.)
#include <gtest/gtest.h>

#include "configs/config.h"
#include "parallel/topology.h"
#include "tests/test_util.h"

namespace cadtrain::parallel {
namespace {

TEST(ParallelDims, RankFormulaMatchesTheWorkedExample) {
  // The example of topology.h: dp 2, cp 3, 2 servers, world 8.
  const ParallelDims d{2, 3, 2, 8};
  d.validate();
  const int dp_of[] = {0, 0, 0, 1, 1, 1}, cp_of[] = {0, 1, 2, 0, 1, 2};
  for (int r = 0; r < 6; ++r) {
    const RankCoord c = d.coord(r);
    EXPECT_EQ(c.role, Role::TRAINER);
    EXPECT_EQ(c.dp_index, dp_of[r]) << r;
    EXPECT_EQ(c.cp_index, cp_of[r]) << r;
    EXPECT_EQ(c.server_index, -1);
    EXPECT_EQ(d.trainer_rank(c.dp_index, c.cp_index), r);
  }
  for (int s = 0; s < 2; ++s) {
    const RankCoord c = d.coord(6 + s);
    EXPECT_EQ(c.role, Role::ATTENTION_SERVER);
    EXPECT_EQ(c.server_index, s);
    EXPECT_EQ(c.dp_index, -1);
    EXPECT_EQ(d.server_rank(s), 6 + s);
  }
  EXPECT_THROW(d.coord(8), Error);
  EXPECT_THROW(d.trainer_rank(2, 0), Error);
  EXPECT_EQ(d.describe(),
            "parallel.data_parallel (2) x parallel.context_parallel (3) + attention.cad.dedicated_servers (2) = 8 ranks");
}

TEST(ParallelDims, WrongWorldSizeNamesEveryFactor) {
  const std::string msg = test::error_of([] { ParallelDims{2, 3, 1, 8}.validate(); });
  EXPECT_NE(msg.find("the launch has world size 8 but the layout needs parallel.data_parallel (2) x "
                     "parallel.context_parallel (3) + attention.cad.dedicated_servers (1) = 7 ranks"),
            std::string::npos)
      << msg;
  EXPECT_NE(test::error_of([] { ParallelDims{0, 1, 0, 0}.validate(); }).find("parallel.data_parallel (0)"),
            std::string::npos);
}

TEST(ParallelDims, FromConfigCountsDedicatedServersOnlyInDedicatedMode) {
  auto cfg = config::parse_run_config("parallel { data_parallel: 2 context_parallel: 2 } attention { strategy: RING }",
                                      "test");
  EXPECT_EQ(ParallelDims::from_config(cfg, 4).trainer_ranks(), 4);
  EXPECT_NE(test::error_of([&] { ParallelDims::from_config(cfg, 3); }).find("world size 3"), std::string::npos);
  auto cad = config::parse_run_config(
      "parallel { data_parallel: 2 } attention { strategy: CAD cad { mode: DEDICATED dedicated_servers: 3 } }", "test");
  const ParallelDims d = ParallelDims::from_config(cad, 5);
  EXPECT_EQ(d.dedicated_servers, 3);
  EXPECT_EQ(d.coord(4).role, Role::ATTENTION_SERVER);
  auto fixed = config::parse_run_config("parallel { world_size: 2 data_parallel: 2 }", "test");
  EXPECT_NE(test::error_of([&] { ParallelDims::from_config(fixed, 4); }).find("parallel.world_size is 2"),
            std::string::npos);
}

TEST(ParallelDims, ThreadsPerRankDefaultToCoresOverRanksOnTheNode) {
  NodeInfo node;
  node.cores = 16;
  node.local_size = 3;
  EXPECT_EQ(threads_per_rank(0, nullptr, node), 5);
  EXPECT_EQ(threads_per_rank(2, nullptr, node), 2);
  EXPECT_EQ(threads_per_rank(0, "4", node), 4);
  EXPECT_EQ(threads_per_rank(0, "", node), 5);
  node.local_size = 32;
  EXPECT_EQ(threads_per_rank(0, nullptr, node), 1);
}

TEST(ParallelDims, ConfigTimeoutHasASaneDefault) {
  const auto cfg = config::parse_run_config("", "test");
  EXPECT_EQ(cfg.parallel().timeout_s(), 600.0);
  EXPECT_NE(test::error_of([] { config::parse_run_config("parallel { timeout_s: 0 }", "test"); }).find("parallel.timeout_s"),
            std::string::npos);
}

}  // namespace
}  // namespace cadtrain::parallel
