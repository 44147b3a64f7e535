// MPI's lifetime in one process (parallel/mpi_runtime.h).
#include "parallel/mpi_runtime.h"

#include <mpi.h>

#include <unistd.h>

#include <algorithm>
#include <exception>

#include "parallel/mpi_communicator.h"

namespace cadtrain::parallel {
namespace {

// Ranks sharing memory form a node; nodes are numbered in the order of their lowest world rank.
NodeInfo discover_node(const RankIdentity& id) {
  NodeInfo n;
  n.host = id.host;
  n.cores = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  MPI_Comm local = MPI_COMM_NULL, leaders = MPI_COMM_NULL;
  const std::string where = id.describe() + ": finding the ranks of this node";
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, id.world_rank, MPI_INFO_NULL, &local),
            where.c_str());
  MPI_Comm_rank(local, &n.local_rank);
  MPI_Comm_size(local, &n.local_size);
  check_mpi(MPI_Comm_split(MPI_COMM_WORLD, n.local_rank == 0 ? 0 : MPI_UNDEFINED, id.world_rank, &leaders),
            where.c_str());
  int index_and_count[2] = {0, 1};
  if (leaders != MPI_COMM_NULL) {
    MPI_Comm_rank(leaders, &index_and_count[0]);
    MPI_Comm_size(leaders, &index_and_count[1]);
    MPI_Comm_free(&leaders);
  }
  check_mpi(MPI_Bcast(index_and_count, 2, MPI_INT, 0, local), where.c_str());
  MPI_Comm_free(&local);
  n.node_index = index_and_count[0];
  n.node_count = index_and_count[1];
  return n;
}

}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv)
    : mpi_thread_(std::this_thread::get_id()), uncaught_at_start_(std::uncaught_exceptions()) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  CADTRAIN_CHECK(!initialized, "MPI is already initialised: create one MpiRuntime per process");
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  identity_ = RankIdentity::of_this_process(rank, size);
  if (provided < MPI_THREAD_FUNNELED) {
    MPI_Finalize();
    fail("{}: MPI provides thread level {} but cadtrain needs MPI_THREAD_FUNNELED ({})", identity_.describe(), provided,
         MPI_THREAD_FUNNELED);
  }
  node_ = discover_node(identity_);
}

MpiRuntime::~MpiRuntime() {
  // Finalising synchronises with the other ranks: with an exception unwinding (a peer may be
  // gone) that could hang, so the process exits without it and the launcher ends the job.
  if (std::uncaught_exceptions() > uncaught_at_start_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::unique_ptr<Communicator> MpiRuntime::world(double timeout_s) {
  CADTRAIN_CHECK(std::this_thread::get_id() == mpi_thread_, "{}: MpiRuntime::world called from another thread",
                 identity_.describe());
  install_termination_report(identity_);
  return make_mpi_communicator(MPI_COMM_WORLD, "world", std::make_shared<Watchdog>(timeout_s, identity_), mpi_thread_);
}

void MpiRuntime::abort_job(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it ever does
}

}  // namespace cadtrain::parallel
