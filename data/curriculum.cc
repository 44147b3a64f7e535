// Pacing functions and the easy-to-hard document ranking (see data/curriculum.h).
#include "data/curriculum.h"

#include <algorithm>  // std::stable_sort, std::clamp
#include <cmath>      // std::pow, std::ceil
#include <numeric>    // std::iota
#include <string>     // the summary line

#include <fmt/format.h>

#include "common/error.h"  // fail(), with_context()
#include "common/rng.h"    // uint128_t
#include "data/dataset.h"  // difficulty column

namespace cadtrain::data {

double pacing_fraction(const config::CurriculumConfig& cfg, uint64_t step, uint64_t full_at_step) {
  if (cfg.pacing() == config::PACING_NONE || step >= full_at_step) return 1.0;
  const double s = cfg.start_fraction();
  const double t = static_cast<double>(step) / static_cast<double>(full_at_step);
  switch (cfg.pacing()) {
    case config::PACING_LINEAR:
      return s + (1.0 - s) * t;
    case config::PACING_ROOT: {
      const double p = cfg.root_degree();
      const double sp = std::pow(s, p);
      return std::pow(sp + (1.0 - sp) * t, 1.0 / p);
    }
    case config::PACING_STEP: {
      // floor(step_count * step / full_at_step) in integers: exact at the increments.
      const uint64_t k = cfg.step_count();
      const auto done = static_cast<uint64_t>(static_cast<uint128_t>(k) * step / full_at_step);
      return s + (1.0 - s) * static_cast<double>(done) / static_cast<double>(k);
    }
    default:
      fail("data.curriculum.pacing {} is not a known pacing function", static_cast<int>(cfg.pacing()));
  }
}

Curriculum::Curriculum(const config::CurriculumConfig& cfg, std::span<const float> difficulty,
                       uint64_t total_steps, uint64_t micro_batches_per_step)
    : cfg_(cfg),
      full_at_step_(cfg.full_at_step() > 0 ? cfg.full_at_step() : total_steps),
      micro_batches_per_step_(micro_batches_per_step) {
  if (full_at_step_ == 0) fail("curriculum: full_at_step and total_steps are both 0");
  if (micro_batches_per_step_ == 0) fail("curriculum: micro_batches_per_step must be > 0");
  if (difficulty.empty()) fail("curriculum: the dataset has no documents");
  std::vector<uint64_t> by_difficulty(difficulty.size());
  std::iota(by_difficulty.begin(), by_difficulty.end(), uint64_t{0});
  // Stable: equal difficulties keep document order, so the ranking is the same everywhere.
  std::stable_sort(by_difficulty.begin(), by_difficulty.end(),
                   [&](uint64_t a, uint64_t b) { return difficulty[a] < difficulty[b]; });
  rank_.resize(difficulty.size());
  for (uint64_t r = 0; r < by_difficulty.size(); ++r) rank_[by_difficulty[r]] = r;
}

uint64_t Curriculum::admitted_count(uint64_t step) const {
  const double n = static_cast<double>(rank_.size());
  // Counts are whole documents: a product a rounding error above an integer stays that integer.
  const double wanted = std::ceil(pacing_fraction(cfg_, step, full_at_step_) * n - 1e-6);
  return std::clamp<uint64_t>(static_cast<uint64_t>(std::max(wanted, 0.0)), 1, rank_.size());
}

std::shared_ptr<const Curriculum> make_curriculum(const config::CurriculumConfig& cfg, const Dataset& dataset,
                                                  uint64_t total_steps, uint64_t micro_batches_per_step) {
  if (cfg.pacing() == config::PACING_NONE) return nullptr;
  if (dataset.num_docs() > 0 && dataset.difficulty().empty()) {
    fail("data.curriculum: {} has no /difficulty to order documents by; write one with `cadtrain data score`, "
         "or set data.curriculum.pacing: PACING_NONE",
         dataset.path());
  }
  std::shared_ptr<const Curriculum> out;
  with_context(fmt::format("{}: curriculum", dataset.path()), [&] {
    out = std::make_shared<const Curriculum>(cfg, dataset.difficulty(), total_steps, micro_batches_per_step);
  });
  return out;
}

std::string curriculum_summary(const config::CurriculumConfig& cfg, const Curriculum& curriculum) {
  std::string shape = config::Pacing_Name(cfg.pacing());
  if (cfg.pacing() == config::PACING_STEP) shape += fmt::format(" ({} increments)", cfg.step_count());
  if (cfg.pacing() == config::PACING_ROOT) shape += fmt::format(" (degree {})", cfg.root_degree());
  return fmt::format("curriculum: {}, easiest first by /difficulty: {} of {} documents eligible at step 0, all "
                     "from step {} (eligibility is set per packing window)",
                     shape, curriculum.admitted_count(0), curriculum.num_docs(), curriculum.full_at_step());
}

}  // namespace cadtrain::data
