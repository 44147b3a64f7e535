// MPI's lifetime in one process (parallel/mpi_runtime.h).
#include "parallel/mpi_runtime.h"

#include <mpi.h>

#include <exception>

#include "parallel/mpi_communicator.h"

namespace cadtrain::parallel {

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
