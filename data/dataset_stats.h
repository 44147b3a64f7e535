// Summaries of a dataset for `cadtrain data inspect` and benchmarks: quantiles of document
// lengths and difficulties, and a power-of-two length histogram. Reads only the in-memory
// offsets and difficulties, never the tokens.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace cadtrain::data {

class Dataset;

struct Summary {
  uint64_t count = 0;
  double min = 0, mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// Quantiles by the nearest-rank rule; all zeros for an empty input.
Summary summarize(std::vector<double> values);

// buckets[b] counts values in [2^b, 2^(b+1)); zeros are counted apart.
struct Log2Histogram {
  uint64_t zeros = 0;
  std::vector<uint64_t> buckets;
};
Log2Histogram log2_histogram(std::span<const uint64_t> values);

std::vector<uint64_t> doc_lengths(const Dataset& dataset);

}  // namespace cadtrain::data
