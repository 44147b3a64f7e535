// The single-process TrainGroup (see train_group.h).
#include "trainer/train_group.h"

#include "trainer/parameters.h"

namespace cadtrain::trainer {
namespace {

class SingleProcessGroup final : public TrainGroup {
 public:
  uint32_t data_rank() const override { return 0; }
  uint32_t data_ranks() const override { return 1; }
  bool is_writer() const override { return true; }
  void sum_over_batch(std::span<double> /*values*/) override {}
  std::unique_ptr<GradientSync> make_gradient_sync(ParameterSet& params, kernels::Backend& /*backend*/) override {
    return std::make_unique<LocalGradientSync>(params.infos().size());
  }
};

}  // namespace

std::unique_ptr<TrainGroup> make_single_process_group() { return std::make_unique<SingleProcessGroup>(); }

}  // namespace cadtrain::trainer
