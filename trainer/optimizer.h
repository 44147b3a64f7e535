// AdamW with decoupled weight decay, global-norm clipping and the learning-rate schedule.
#pragma once

#include <cstdint>
#include <string>

#include "configs/cadtrain.pb.h"
#include "trainer/parameters.h"

namespace cadtrain::kernels {
class Backend;
}

namespace cadtrain::trainer {

// Learning rate for the 0-based step: linear warm-up over warmup_steps, then cosine, linear or
// constant decay to min_lr_ratio * lr at total_steps.
double learning_rate(const config::OptimizerConfig& opt, const config::ScheduleConfig& schedule, uint64_t step);

class AdamW {
 public:
  // Marks tensors whose name contains an optimizer.no_decay entry (default: "norm") as not decayed.
  AdamW(const config::OptimizerConfig& cfg, ParameterSet& params, kernels::Backend& backend);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // sqrt of the sum of squared gradients over every tensor (double accumulation).
  double grad_norm();
  // The first tensor whose gradient (or weight) holds a NaN or Inf, or "" when all are finite.
  std::string first_nonfinite_grad();
  std::string first_nonfinite_param();
  // Clips to cfg.grad_clip (when > 0) given the global norm, then applies one AdamW update with lr.
  void step(double lr, double grad_norm);

  float* m() { return m_; }
  float* v() { return v_; }
  uint64_t steps_done() const { return steps_; }
  void set_steps_done(uint64_t steps) { steps_ = steps; }

 private:
  config::OptimizerConfig cfg_;
  ParameterSet& params_;
  kernels::Backend& be_;
  float* m_ = nullptr;
  float* v_ = nullptr;
  uint64_t steps_ = 0;
};

}  // namespace cadtrain::trainer
