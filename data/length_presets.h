// Document-length distributions of the synthetic corpus (internal to cadtrain_data): the measured
// quantile tables behind PRETRAIN and PROLONG, and one draw of length / mean for any
// LengthDistribution. Rounding and clipping to [min_doc_tokens, max_doc_tokens] happen in
// synth_corpus.cc.
#pragma once

#include <span>

#include "configs/cadtrain.pb.h"  // SynthConfig, LengthDistribution

namespace cadtrain {
class Rng;
}

namespace cadtrain::data {

// One point of an inverse CDF: a fraction p of documents is at most ratio * mean tokens long.
struct QuantilePoint {
  double p;
  double ratio;
};

// The quantile table of PRETRAIN or PROLONG (p from 0 to 1, increasing); throws cadtrain::Error
// for a distribution without one.
std::span<const QuantilePoint> length_quantiles(config::LengthDistribution dist);

// Inverse CDF at u in [0, 1]: piecewise-linear interpolation between the table's points.
double quantile_ratio(std::span<const QuantilePoint> table, double u);

// Mean of the piecewise-linear distribution (the integral of the inverse CDF). The tables keep the
// published quantiles exactly, so this is slightly above 1: linear interpolation over the sparse
// extreme tail overestimates it (PRETRAIN ~1.027, PROLONG ~1.051).
double quantile_table_mean(std::span<const QuantilePoint> table);

// One draw of (document length / cfg.mean_doc_tokens) from cfg.length_distribution, before
// rounding and clipping. LOGNORMAL has mean exactly 1; FIXED is exactly 1 and uses no randomness.
double sample_length_ratio(const config::SynthConfig& cfg, Rng& rng);

}  // namespace cadtrain::data
