// Quantile summaries and log2 histograms (see dataset_stats.h).
#include "data/dataset_stats.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>

#include "data/dataset.h"

namespace cadtrain::data {

Summary summarize(std::vector<double> values) {
  Summary s;
  s.count = values.size();
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  // Nearest rank: the smallest value with at least q of the data at or below it.
  const auto rank = [&](double q) {
    const auto i = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::clamp<size_t>(i, 1, values.size()) - 1];
  };
  s.min = values.front();
  s.max = values.back();
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  return s;
}

Log2Histogram log2_histogram(std::span<const uint64_t> values) {
  Log2Histogram h;
  for (const uint64_t v : values) {
    if (v == 0) {
      ++h.zeros;
      continue;
    }
    const auto b = static_cast<size_t>(std::bit_width(v) - 1);
    if (h.buckets.size() <= b) h.buckets.resize(b + 1, 0);
    ++h.buckets[b];
  }
  return h;
}

std::vector<uint64_t> doc_lengths(const Dataset& dataset) {
  const auto offsets = dataset.doc_offsets();
  std::vector<uint64_t> lengths(dataset.num_docs());
  for (size_t d = 0; d < lengths.size(); ++d) lengths[d] = offsets[d + 1] - offsets[d];
  return lengths;
}

}  // namespace cadtrain::data
