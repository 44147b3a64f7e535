// The TrainGroup of an MPI job (see parallel_group.h).
#include "trainer/parallel_group.h"

#include <algorithm>
#include <vector>

#include "parallel/bucketed_all_reduce.h"
#include "parallel/context_shard.h"
#include "parallel/ring_attention.h"
#include "parallel/token_ring.h"
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
      : topology_(world, parallel::ParallelDims::from_config(cfg, world.size())),
        bucket_floats_(bucket_floats),
        strategy_(cfg.attention().strategy()),
        zigzag_(cfg.attention().ring().zigzag()) {
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

  uint32_t context_ranks() const override { return static_cast<uint32_t>(topology_.dims().context_parallel); }

  // The rows parallel::shard_for_context_rank gives this rank (zigzag per attention.ring.zigzag),
  // each sequence keeping its document id and true positions.
  data::MicroBatch context_share(data::MicroBatch global) const override {
    const int P = topology_.dims().context_parallel;
    if (P == 1) return global;
    const auto n_seqs = static_cast<int64_t>(global.cu_seqlens.size()) - 1;
    std::vector<int32_t> first_pos(static_cast<size_t>(std::max<int64_t>(n_seqs, 0)), 0);
    for (int64_t s = 0; s < n_seqs; ++s) {
      const auto row = static_cast<size_t>(global.cu_seqlens[static_cast<size_t>(s)]);
      if (row < global.positions.size()) first_pos[static_cast<size_t>(s)] = global.positions[row];
    }
    const kernels::SequenceLayout layout{global.cu_seqlens.data(), n_seqs, first_pos.data(),
                                         global.doc_ids.size() == static_cast<size_t>(n_seqs) ? global.doc_ids.data()
                                                                                               : nullptr};
    const parallel::ContextShard shard = parallel::shard_for_context_rank(layout, P, topology_.coord().cp_index, zigzag_);
    data::MicroBatch mine;
    const bool answers = global.is_answer.size() == global.tokens.size();
    for (const int64_t r : shard.rows) {
      const auto i = static_cast<size_t>(r);
      mine.tokens.push_back(global.tokens[i]);
      mine.targets.push_back(global.targets[i]);
      mine.loss_mask.push_back(global.loss_mask[i]);
      mine.positions.push_back(global.positions[i]);
      if (answers) mine.is_answer.push_back(global.is_answer[i]);
    }
    mine.cu_seqlens = shard.cu_seqlens;
    mine.doc_ids = shard.doc_ids;
    return mine;
  }

  std::unique_ptr<kernels::CoreAttention> make_core_attention() override {
    switch (strategy_) {
      case config::RING: return std::make_unique<parallel::RingAttention>(topology_.cp());
      case config::TOKENRING: return std::make_unique<parallel::TokenRingAttention>(topology_.cp());
      default: return nullptr;
    }
  }

 private:
  parallel::Topology topology_;
  size_t bucket_floats_;
  config::AttentionStrategy strategy_;
  bool zigzag_;
};

}  // namespace

std::unique_ptr<TrainGroup> make_parallel_group(parallel::Communicator& world, const config::RunConfig& cfg,
                                                size_t bucket_floats) {
  return std::make_unique<ParallelGroup>(world, cfg, bucket_floats);
}

}  // namespace cadtrain::trainer
