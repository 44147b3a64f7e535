// AdamW, clipping and the schedule (see optimizer.h).
#include "trainer/optimizer.h"

#include <cmath>
#include <numbers>

#include "kernels/backend.h"

namespace cadtrain::trainer {

double learning_rate(const config::OptimizerConfig& opt, const config::ScheduleConfig& schedule, uint64_t step) {
  const double peak = opt.lr();
  const uint64_t warmup = schedule.warmup_steps();
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<uint64_t>(1, schedule.total_steps() - warmup));
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  const double floor = schedule.min_lr_ratio();
  switch (schedule.decay()) {
    case config::COSINE:
      return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    case config::LINEAR:
      return peak * (1.0 - (1.0 - floor) * progress);
    case config::CONSTANT:
      return peak;
  }
  return peak;
}

AdamW::AdamW(const config::OptimizerConfig& cfg, ParameterSet& params, kernels::Backend& backend)
    : cfg_(cfg), params_(params), be_(backend) {
  m_ = be_.alloc(params_.total());
  v_ = be_.alloc(params_.total());
  for (ParamInfo& info : params_.infos()) {
    info.weight_decay = true;
    if (cfg_.no_decay_size() == 0) {
      info.weight_decay = info.name.find("norm") == std::string::npos;
    }
    for (const auto& pattern : cfg_.no_decay()) {
      if (info.name.find(pattern) != std::string::npos) info.weight_decay = false;
    }
  }
}

AdamW::~AdamW() {
  be_.free(m_);
  be_.free(v_);
}

double AdamW::grad_norm() {
  double sum = 0;
  for (size_t i = 0; i < params_.infos().size(); ++i) {
    sum += be_.sum_squares(params_.grad(i), params_.info(i).numel);
  }
  return std::sqrt(sum);
}

std::string AdamW::first_nonfinite_grad() {
  for (size_t i = 0; i < params_.infos().size(); ++i) {
    if (!std::isfinite(be_.sum_squares(params_.grad(i), params_.info(i).numel))) return params_.info(i).name;
  }
  return {};
}

std::string AdamW::first_nonfinite_param() {
  for (size_t i = 0; i < params_.infos().size(); ++i) {
    if (!std::isfinite(be_.sum_squares(params_.param(i), params_.info(i).numel))) return params_.info(i).name;
  }
  return {};
}

void AdamW::step(double lr, double grad_norm) {
  ++steps_;
  const double clip = cfg_.grad_clip();
  if (clip > 0 && grad_norm > clip) be_.scale(params_.grads(), static_cast<float>(clip / grad_norm), params_.total());
  for (size_t i = 0; i < params_.infos().size(); ++i) {
    const ParamInfo& info = params_.info(i);
    be_.adamw_step(params_.param(i), params_.grad(i), m_ + info.offset, v_ + info.offset, info.numel,
                   static_cast<float>(lr), static_cast<float>(cfg_.beta1()), static_cast<float>(cfg_.beta2()),
                   static_cast<float>(cfg_.eps()), info.weight_decay ? static_cast<float>(cfg_.weight_decay()) : 0.0f,
                   static_cast<int64_t>(steps_));
  }
}

}  // namespace cadtrain::trainer
