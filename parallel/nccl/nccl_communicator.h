// The NCCL backend of Communicator, for CUDA buffers (built when CUDA is found; target
// cadtrain_parallel_nccl).
//
// Bootstrap: rank 0 of `bootstrap` (an MPI communicator over the same ranks) creates the NCCL
// unique id and broadcasts it over MPI; every rank then joins with ncclCommInitRank on its device.
// Operations run on the communicator's own CUDA stream; a Request completes when a CUDA event
// recorded after the operation has fired, so compute on other streams overlaps it. Buffers must
// live on this communicator's device.
//
// Differences from the MPI backend, by NCCL's design: reductions are deterministic for one NCCL
// version, rank count and algorithm (NCCL_ALGO/NCCL_PROTO pinned), but not in rank order; point-
// to-point tags are checked but not used for matching (messages between two ranks match in order);
// a size mismatch is not detected; on timeout the watchdog cannot name the missing ranks, and the
// NCCL communicator is aborted so the GPU is not left blocked.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace cadtrain::parallel {

// CUDA devices visible to this process; 0 when there is no GPU or driver, with the reason in *why.
int cuda_device_count(std::string* why);

// An NCCL communicator over the ranks of `bootstrap`, this rank on CUDA device `device`.
// Collective over bootstrap. `name` names it in errors.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, const std::string& name);

}  // namespace cadtrain::parallel
