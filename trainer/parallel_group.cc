// The TrainGroup of an MPI job (see parallel_group.h).
#include "trainer/parallel_group.h"

#include <vector>

#include "parallel/bucketed_all_reduce.h"
#include "parallel/topology.h"
#include "trainer/parameters.h"

namespace cadtrain::trainer {
namespace {

// grads_ready -> BucketedAllReduce::ready, finish_step -> finish; the contract checks of the
// single-process sync (groups in decreasing offset order, each parameter once) run as well, so a
// model that breaks the contract fails the same way on one rank and on many.
class BucketedGradientSync final : public GradientSync {
 public:
  BucketedGradientSync(parallel::Communicator& trainers, ParameterSet& params, size_t bucket_floats)
      : trainers_(trainers),
        check_(params.infos().size()),
        reduce_(trainers, params.grads(), params.total(), bucket_floats) {}

  void grads_ready(const GradGroup& group) override {
    check_.grads_ready(group);
    const parallel::ScopedOpContext context(trainers_.watchdog(),
                                            {.layer = group.layer >= 0 ? group.layer : -1,
                                             .phase = "gradient all-reduce"});
    reduce_.ready(group.offset, group.count);
  }

  void finish_step() override {
    check_.finish_step();
    const parallel::ScopedOpContext context(trainers_.watchdog(), {.phase = "gradient all-reduce (finish)"});
    reduce_.finish();
  }

 private:
  parallel::Communicator& trainers_;
  LocalGradientSync check_;
  parallel::BucketedAllReduce reduce_;
};

class ParallelGroup final : public TrainGroup {
 public:
  ParallelGroup(parallel::Communicator& world, const config::RunConfig& cfg, size_t bucket_floats)
      : topology_(world, parallel::ParallelDims::from_config(cfg, world.size())), bucket_floats_(bucket_floats) {
    if (!topology_.is_trainer()) {
      fail("{}: world rank {} is a dedicated attention server; this build has no server loop in `train` yet",
           world.watchdog().identity().describe(), world.rank());
    }
  }

  uint32_t data_rank() const override { return static_cast<uint32_t>(topology_.coord().dp_index); }
  uint32_t data_ranks() const override { return static_cast<uint32_t>(topology_.dims().data_parallel); }
  uint32_t world_size() const override { return static_cast<uint32_t>(topology_.dims().world_size); }
  bool is_writer() const override { return topology_.world().rank() == 0; }

  // Sums in double over the trainers, in rank order (Communicator's reductions), so every rank
  // gets the same bits.
  void sum_over_batch(std::span<double> values) override {
    if (values.empty()) return;
    const parallel::ScopedOpContext context(topology_.world().watchdog(), {.phase = "sum over the global batch"});
    topology_.role_group().all_reduce(host_view(values), parallel::ReduceOp::SUM);
  }

  std::unique_ptr<GradientSync> make_gradient_sync(ParameterSet& params, kernels::Backend& /*backend*/) override {
    return std::make_unique<BucketedGradientSync>(topology_.role_group(), params, bucket_floats_);
  }

 private:
  parallel::Topology topology_;
  size_t bucket_floats_;
};

}  // namespace

std::unique_ptr<TrainGroup> make_parallel_group(parallel::Communicator& world, const config::RunConfig& cfg,
                                                size_t bucket_floats) {
  return std::make_unique<ParallelGroup>(world, cfg, bucket_floats);
}

}  // namespace cadtrain::trainer
