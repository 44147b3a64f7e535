// The single-process GradientSync (see grad_sync.h): nothing to reduce, only the contract checked.
#include "trainer/grad_sync.h"

#include "common/error.h"

namespace cadtrain::trainer {

void LocalGradientSync::grads_ready(const GradGroup& group) {
  CADTRAIN_CHECK(group.end_param > group.first_param && group.end_param <= n_params_,
                 "gradient group of layer {}: parameters [{}, {}) out of the model's {}", group.layer,
                 group.first_param, group.end_param, n_params_);
  CADTRAIN_CHECK(group.offset + group.count <= next_end_,
                 "gradient group of layer {}: floats [{}, {}) announced after a group ending at {} "
                 "(groups must arrive in decreasing offset order, each once per step)",
                 group.layer, group.offset, group.offset + group.count, next_end_);
  next_end_ = group.offset;
  announced_params_ += group.end_param - group.first_param;
  ++groups_;
}

void LocalGradientSync::finish_step() {
  CADTRAIN_CHECK(groups_ == 0 || announced_params_ == n_params_,
                 "the backward announced the gradients of {} of the model's {} parameters", announced_params_,
                 n_params_);
  last_step_groups_ = groups_;
  groups_ = 0;
  announced_params_ = 0;
  next_end_ = SIZE_MAX;
}

}  // namespace cadtrain::trainer
