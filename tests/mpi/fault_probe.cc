// A job in which one rank dies (kill -9) or stops (SIGSTOP) while the others wait in an
// all-reduce, for run_fault_case.sh, which checks that every other rank reports where it waited
// and for whom, and that the job ends non-zero instead of hanging.
// Usage: fault_probe kill|stop TIMEOUT_S
#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <vector>

#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  cadtrain::parallel::MpiRuntime mpi(&argc, &argv);
  if (argc != 3 || (std::strcmp(argv[1], "kill") != 0 && std::strcmp(argv[1], "stop") != 0)) {
    fmt::print(stderr, "usage: fault_probe kill|stop TIMEOUT_S\n");
    return 2;
  }
  try {
    auto world = mpi.world(std::stod(argv[2]));
    const int victim = world->size() - 1;
    world->barrier();  // everyone is up
    world->watchdog().set_context({7, 3, "grad bucket 1"});
    if (world->rank() == victim) {
      usleep(1000000);  // the others are waiting in the all-reduce by now, even on a loaded machine
      raise(std::strcmp(argv[1], "kill") == 0 ? SIGKILL : SIGSTOP);
    }
    std::vector<float> grad(1024, 1.0f);
    world->all_reduce(cadtrain::host_view(grad), cadtrain::parallel::ReduceOp::SUM);
    fmt::print(stderr, "{}: the all-reduce completed although rank {} was gone\n", mpi.identity().describe(), victim);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    mpi.abort_job(1);
  }
}
