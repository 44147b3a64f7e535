// The MPI backend of Communicator, for host buffers (internal to parallel/: MpiRuntime::world()
// creates the world communicator; split() makes the others).
//
// Every collective is built from point-to-point messages on a duplicate of the user's MPI
// communicator (so user tags never match collective traffic), each peer's part a message of its
// own. That buys three things: reductions run in our code, in rank order (deterministic, the same
// bits on every rank); the watchdog knows exactly which peers' messages have not arrived; and a
// size mismatch between two ranks is caught and named. Algorithms (P ranks, N elements):
//   all_reduce     = reduce_scatter + all_gather, each rank owning a 1/P block: sends
//                    2 (P-1)/P N per rank, the bus bandwidth of a ring, in 2 message rounds.
//   reduce_scatter = every rank sends block j to rank j, which sums blocks in rank order.
//   all_gather     = every rank sends its block to every other.
//   all_to_all_v   = one message per ordered pair (zero counts too: a zero-length message).
//   broadcast      = the root sends to every other rank; barrier = an empty message per pair.
// Direct exchange suits the tens of ranks of a node or a small job; large jobs use NCCL.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <thread>

#include "parallel/communicator.h"

namespace cadtrain::parallel {

// A communicator over duplicates of `comm` (the caller keeps comm); `name` names it in errors.
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const std::string& name,
                                                    std::shared_ptr<Watchdog> watchdog, std::thread::id mpi_thread);

// Throws Error naming `what` and MPI's message when rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);

}  // namespace cadtrain::parallel
