// The watchdog under mpirun: an operation a peer never joins fails after parallel.timeout_s with
// a message naming the operation, the caller's step/layer/phase, the missing ranks, host and pid.
// (Killed and stopped ranks: tests/mpi/fault_probe.cc with run_fault_case.sh.)
#include <gtest/gtest.h>

#include <unistd.h>

#include <vector>

#include "parallel/communicator.h"
#include "tests/mpi/mpi_test_main.h"
#include "tests/test_util.h"

namespace cadtrain {
namespace {

using parallel::ReduceOp;

std::string identity_of(int rank, int size) {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return fmt::format("rank {}/{} (host {}, pid {})", rank, size, host, getpid());
}

TEST(MpiWatchdog, ReceiveThatNeverArrivesTimesOutWithContext) {
  auto fast = test::runtime().world(0.3);
  if (fast->rank() == 0) {
    std::vector<float> in(16);
    std::string msg;
    fast->watchdog().set_step(7);
    {
      parallel::ScopedOpContext ctx(fast->watchdog(), {-1, 3, "ring forward step 1"});  // keeps step 7
      parallel::Request r = fast->irecv(host_view(in), 1, 9);
      try {
        while (!r.test()) {
        }
        ADD_FAILURE() << "the receive completed";
      } catch (const parallel::CommTimeout& e) {
        msg = e.what();
      }
    }
    EXPECT_NE(msg.find(identity_of(0, fast->size())), std::string::npos) << msg;
    EXPECT_NE(msg.find("receive from rank 1 (tag 9) of float32 x 16 on host on communicator \"world\""), std::string::npos) << msg;
    EXPECT_NE(msg.find("did not complete within parallel.timeout_s = 0.3 s"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(step 7, layer 3, ring forward step 1)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("ranks that did not arrive: 1 (world rank 1)"), std::string::npos) << msg;
    EXPECT_EQ(fast->watchdog().context().layer, -1) << "the scoped context was not restored";
    EXPECT_EQ(fast->watchdog().context().step, 7);
    fast->watchdog().set_step(-1);
  }
  test::world().barrier();
}

TEST(MpiWatchdog, CollectiveARankSkipsNamesThatRank) {
  auto fast = test::runtime().world(0.3);
  auto sub = fast->split(0, fast->rank(), "dp");
  if (sub->rank() != 1) {
    sub->watchdog().set_step(12);
    std::vector<double> x(1000, 1.0);
    const std::string msg = test::error_of([&] { sub->all_reduce(host_view(x), ReduceOp::SUM); });
    sub->watchdog().set_step(-1);
    EXPECT_NE(msg.find(identity_of(fast->rank(), fast->size())), std::string::npos) << msg;
    EXPECT_NE(msg.find("all_reduce (sum) of float64 x 1000 on host on communicator \"dp\" (" +
                       std::to_string(sub->size()) + " ranks)"),
              std::string::npos) << msg;
    EXPECT_NE(msg.find("(step 12)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("ranks that did not arrive: 1 (world rank 1)"), std::string::npos) << msg;
  }
  test::world().barrier();
}

}  // namespace
}  // namespace cadtrain
