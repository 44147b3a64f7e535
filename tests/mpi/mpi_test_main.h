// Shared by the MPI test programs: a GoogleTest main under MPI. Every rank runs every test; the
// program's exit status is the worst over ranks, so a failure on any rank fails the ctest entry.
#pragma once

#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

namespace cadtrain::test {

// The world communicator of the running test program (watchdog: 20 s).
parallel::Communicator& world();
// The process's MPI runtime (to make communicators with other timeouts).
parallel::MpiRuntime& runtime();

}  // namespace cadtrain::test
