// Length distributions of the synthetic corpus: measured quantile tables and their sampling.
#include "data/length_presets.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"  // fail
#include "common/rng.h"  // Rng

namespace cadtrain::data {
namespace {

// Document length / mean at each percentile, measured on a published pretraining mix
// (99,519 documents). Note the heavy tail: p99 is 6.6x the mean, p99.9 30x.
constexpr QuantilePoint kPretrain[] = {
    {0.000, 0.0003}, {0.010, 0.0159},  {0.020, 0.0326},  {0.050, 0.0818},  {0.100, 0.1631},
    {0.200, 0.3238}, {0.300, 0.4877},  {0.400, 0.6517},  {0.500, 0.8145},  {0.600, 0.9745},
    {0.700, 1.1394}, {0.800, 1.3014},  {0.900, 1.4599},  {0.950, 1.5422},  {0.980, 2.5439},
    {0.990, 6.5774}, {0.995, 17.4411}, {0.999, 30.2372}, {1.000, 31.5295},
};

// The same for a published long-document (ProLong-style) mix (77,932 documents): fewer very short
// documents, a longer body and a single extreme outlier at 111x the mean.
constexpr QuantilePoint kProlong[] = {
    {0.000, 0.1884}, {0.010, 0.2222}, {0.020, 0.2343},  {0.050, 0.2625},   {0.100, 0.3011},
    {0.200, 0.3703}, {0.300, 0.4414}, {0.400, 0.5223},  {0.500, 0.6270},   {0.600, 0.7738},
    {0.700, 0.9889}, {0.800, 1.3270}, {0.900, 1.9827},  {0.950, 2.7453},   {0.980, 4.0331},
    {0.990, 5.3310}, {0.995, 6.9981}, {0.999, 15.5305}, {1.000, 111.4547},
};

}  // namespace

std::span<const QuantilePoint> length_quantiles(config::LengthDistribution dist) {
  switch (dist) {
    case config::PRETRAIN:
      return kPretrain;
    case config::PROLONG:
      return kProlong;
    default:
      fail("length distribution {} has no quantile table", config::LengthDistribution_Name(dist));
  }
}

double quantile_ratio(std::span<const QuantilePoint> table, double u) {
  u = std::clamp(u, 0.0, 1.0);
  // First point with p > u; the segment [hi-1, hi] contains u.
  auto hi = std::upper_bound(table.begin(), table.end(), u,
                             [](double x, const QuantilePoint& q) { return x < q.p; });
  if (hi == table.end()) return table.back().ratio;
  if (hi == table.begin()) return table.front().ratio;
  const QuantilePoint& a = *(hi - 1);
  const QuantilePoint& b = *hi;
  const double t = (u - a.p) / (b.p - a.p);
  return a.ratio + t * (b.ratio - a.ratio);
}

double quantile_table_mean(std::span<const QuantilePoint> table) {
  double mean = 0.0;  // trapezoids of the inverse CDF over u
  for (size_t i = 1; i < table.size(); ++i) {
    mean += (table[i].p - table[i - 1].p) * 0.5 * (table[i].ratio + table[i - 1].ratio);
  }
  return mean;
}

double sample_length_ratio(const config::SynthConfig& cfg, Rng& rng) {
  switch (cfg.length_distribution()) {
    case config::PRETRAIN:
    case config::PROLONG: {
      // Interpolating the thin extreme tail lifts the table's mean a few percent above 1;
      // dividing by it makes mean_doc_tokens the true mean before clipping.
      const auto table = length_quantiles(cfg.length_distribution());
      return quantile_ratio(table, rng.uniform()) / quantile_table_mean(table);
    }
    case config::LOGNORMAL: {
      // E[exp(sigma Z)] = exp(sigma^2 / 2); dividing by it makes the mean exactly 1.
      const double sigma = cfg.lognormal_sigma();
      return std::exp(sigma * rng.normal() - 0.5 * sigma * sigma);
    }
    case config::FIXED:
      return 1.0;
  }
  fail("synth.length_distribution: unknown value {}", static_cast<int>(cfg.length_distribution()));
}

}  // namespace cadtrain::data
