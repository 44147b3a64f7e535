// GoogleTest main for the MPI test programs (tests/mpi/mpi_test_main.h).
#include "tests/mpi/mpi_test_main.h"

#include <fmt/format.h>

#include <memory>

#include "parallel/mpi_runtime.h"

namespace cadtrain::test {
namespace {
parallel::Communicator* g_world = nullptr;
parallel::MpiRuntime* g_runtime = nullptr;
}  // namespace

parallel::Communicator& world() { return *g_world; }
parallel::MpiRuntime& runtime() { return *g_runtime; }

}  // namespace cadtrain::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  cadtrain::parallel::MpiRuntime mpi(&argc, &argv);
  cadtrain::test::g_runtime = &mpi;
  int worst = 0;
  try {
    auto world = mpi.world(20.0);
    cadtrain::test::g_world = world.get();
    int rc = RUN_ALL_TESTS();
    world->all_reduce(cadtrain::host_view(std::span<int>(&rc, 1)), cadtrain::parallel::ReduceOp::MAX);
    worst = rc;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", mpi.identity().describe(), e.what());
    mpi.abort_job(1);
  }
  return worst;
}
