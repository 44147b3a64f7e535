// A CAD job with one DEDICATED server (the last rank) that dies (kill -9) or hangs (SIGSTOP) while
// the trainers dispatch a layer's forward, for run_cad_fault_case.sh, which checks that every
// trainer reports the CAD call it waited in and the missing server, and that the job ends non-zero.
// Usage: cad_fault_probe kill|stop TIMEOUT_S
#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <thread>
#include <vector>

#include "attention_servers/cad_attention.h"
#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  using namespace cadtrain;
  parallel::MpiRuntime mpi(&argc, &argv);
  if (argc != 3 || (std::strcmp(argv[1], "kill") != 0 && std::strcmp(argv[1], "stop") != 0)) {
    fmt::print(stderr, "usage: cad_fault_probe kill|stop TIMEOUT_S\n");
    return 2;
  }
  try {
    auto world = mpi.world(std::stod(argv[2]));
    const int victim = world->size() - 1;
    attention_servers::CadRuntimeOptions opts;
    opts.trainers = static_cast<uint32_t>(world->size() - 1);
    opts.plan.shard_tokens = 16;
    opts.plan.scheduler.servers = 1;
    opts.plan.scheduler.dedicated = true;
    opts.plan.scheduler.split_rows = 8;
    opts.plan.scheduler.bytes = attention_servers::row_bytes(2, 1, 8, 4);
    world->barrier();  // everyone is up
    if (world->rank() == victim) {
      const int sig = std::strcmp(argv[1], "kill") == 0 ? SIGKILL : SIGSTOP;
      std::thread fault([sig] {
        usleep(300000);  // the trainers have prepared and are about to dispatch
        raise(sig);
      });
      fault.detach();
      attention_servers::run_cad_server(*world, opts);
      fmt::print(stderr, "{}: the server loop ended although it was stopped\n", mpi.identity().describe());
      return 0;
    }
    attention_servers::CadAttention cad(*world, opts);
    const int64_t n = 40;
    std::vector<int32_t> cu = {0, 40};
    std::vector<float> q(n * 16, 0.5f), k(n * 8, 0.25f), v(n * 8, 1.0f), o(n * 16), lse(n * 2);
    const kernels::RowRange all{0, n};
    const auto plan = cad.prepare({n, 2, 1, 8, 0.35f}, {cu.data(), 1, nullptr, nullptr}, std::span(&all, 1));
    usleep(800000);  // the server is gone by now
    auto h = cad.forward(3, *plan, 0, {q.data(), k.data(), v.data(), o.data(), lse.data()});
    h->wait();
    fmt::print(stderr, "{}: the CAD forward completed although rank {} was gone\n", mpi.identity().describe(), victim);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    mpi.abort_job(1);
  }
}
