// Quantiles and histograms against hand-computed values.
#include <gtest/gtest.h>

#include "data/dataset_stats.h"

using namespace cadtrain::data;

TEST(DatasetStats, NearestRankQuantiles) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // 1..100, unsorted
  const Summary s = summarize(v);
  EXPECT_EQ(s.count, 100u);
  EXPECT_EQ(s.min, 1);
  EXPECT_EQ(s.max, 100);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  EXPECT_EQ(s.p50, 50);
  EXPECT_EQ(s.p90, 90);
  EXPECT_EQ(s.p99, 99);
}

TEST(DatasetStats, EmptyAndSingle) {
  EXPECT_EQ(summarize({}).count, 0u);
  const Summary one = summarize({7});
  EXPECT_EQ(one.p50, 7);
  EXPECT_EQ(one.p99, 7);
}

TEST(DatasetStats, Log2Histogram) {
  const std::vector<uint64_t> v = {0, 1, 2, 3, 4, 7, 8, 1024, 0};
  const Log2Histogram h = log2_histogram(v);
  EXPECT_EQ(h.zeros, 2u);
  ASSERT_EQ(h.buckets.size(), 11u);
  EXPECT_EQ(h.buckets[0], 1u);   // 1
  EXPECT_EQ(h.buckets[1], 2u);   // 2, 3
  EXPECT_EQ(h.buckets[2], 2u);   // 4, 7
  EXPECT_EQ(h.buckets[3], 1u);   // 8
  EXPECT_EQ(h.buckets[10], 1u);  // 1024
}
