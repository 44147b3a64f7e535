// MpiRuntime: MPI's lifetime in one process, and the world communicator of the MPI backend.
//
//   int main(int argc, char** argv) {
//     parallel::MpiRuntime mpi(&argc, &argv);
//     try {
//       auto world = mpi.world(cfg.parallel().timeout_s());
//       ...
//     } catch (const cadtrain::Error& e) {
//       fmt::print(stderr, "{}\n", e.what());
//       mpi.abort_job(1);   // ends every rank, including any still blocked on the failed one
//     }
//   }
//
// Thread level: MPI_THREAD_FUNNELED, requested and checked. Only the thread that created the
// runtime calls MPI (communicators check it); OpenMP workers compute while requests are in flight.
#pragma once

#include <memory>
#include <thread>

#include "parallel/communicator.h"
#include "parallel/node_info.h"

namespace cadtrain::parallel {

class MpiRuntime {
 public:
  // MPI_Init_thread; throws when MPI is already initialised or gives less than FUNNELED.
  MpiRuntime(int* argc, char*** argv);
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  // MPI_Finalize; skipped while an exception unwinds (finalising with a peer gone would hang).
  ~MpiRuntime();

  int world_rank() const { return identity_.world_rank; }
  int world_size() const { return identity_.world_size; }
  const RankIdentity& identity() const { return identity_; }
  // This rank's node: local rank, ranks on the node, node index and count, cores (found at start).
  const NodeInfo& node() const { return node_; }

  // The world communicator with a watchdog of `timeout_s` seconds; installs the SIGTERM report
  // (parallel/watchdog.h). Collective: every rank calls it once.
  std::unique_ptr<Communicator> world(double timeout_s);

  // Ends every rank of the job with `code` (MPI_Abort on the world). Does not return.
  [[noreturn]] void abort_job(int code) const;

 private:
  RankIdentity identity_;
  NodeInfo node_;
  std::thread::id mpi_thread_;
  int uncaught_at_start_;
};

}  // namespace cadtrain::parallel
