// The TrainGroup of an MPI job (train_group.h over parallel/): the only place where the trainer
// meets the communicator, so that parallel/ never depends on trainer/ and the training loop never
// names a communicator. Data flows one way: data loader (data/) -> step (trainer/) -> gradient
// synchronisation (parallel/, through this adapter) -> optimizer -> checkpoint.
//
//   parallel::MpiRuntime mpi(&argc, &argv);
//   auto world = mpi.world(cfg.parallel().timeout_s());
//   auto group = trainer::make_parallel_group(*world, cfg);
//   trainer::train(cfg, provenance, resume, *group);
//
// Layout (parallel/topology.h): parallel.data_parallel x parallel.context_parallel trainer ranks
// over `world`, validated against its size. Data-parallel rank = the topology's dp_index; the
// writer is the trainer of world rank 0.
//
// Context parallelism (attention.strategy RING or TOKENRING): the ranks of one context-parallel
// group pack the same micro-batches (P x data.tokens_per_micro_batch tokens); context_share()
// gives each its rows (parallel/context_shard.h: zigzag per attention.ring.zigzag, documents
// keeping their ids and true positions) and make_core_attention() the strategy over the group's
// communicator (parallel/ring_attention.h, parallel/token_ring.h).
//
// Gradient synchronisation: a parallel::BucketedAllReduce over the trainer ranks, fed by
// GradientSync::grads_ready, so each bucket is summed while the backward of the layers below
// runs; every element is summed in rank order, so a run is the same bits on every rank and in
// every run of the same layout. The sum is over all trainers (every data- and context-parallel
// rank contributes the gradient of the tokens it holds).
#pragma once

#include <cstddef>
#include <memory>

#include "configs/cadtrain.pb.h"
#include "parallel/communicator.h"
#include "trainer/train_group.h"

namespace cadtrain::trainer {

// Floats per gradient bucket (4 MiB). Bucket boundaries do not change the result (sums are
// element-wise in rank order), only how much of the communication the backward hides.
constexpr size_t kGradBucketFloats = size_t{1} << 20;

// Collective over `world` (every rank calls it with the same cfg); `world` must outlive the
// group. Throws naming every factor when the layout does not fit world.size(). bucket_floats:
// gradient bucket size (tests use small buckets to exercise several).
std::unique_ptr<TrainGroup> make_parallel_group(parallel::Communicator& world, const config::RunConfig& cfg,
                                                size_t bucket_floats = kGradBucketFloats);

}  // namespace cadtrain::trainer
