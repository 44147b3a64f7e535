// BucketedAllReduce under mpirun: gradients announced range by range, from the end of the flat
// buffer to its start as a backward would, come out as the exact rank-order sum on every rank,
// step after step; bad announcement orders are errors.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/bucketed_all_reduce.h"
#include "tests/mpi/mpi_test_main.h"
#include "tests/test_util.h"

namespace cadtrain::parallel {
namespace {

float grad_value(int rank, int step, size_t i) {
  return static_cast<float>((i * 31 + static_cast<size_t>(rank) * 17 + static_cast<size_t>(step) * 5) % 97) * 0.37f;
}

TEST(MpiBucketedAllReduce, SumsEveryBucketInRankOrderStepAfterStep) {
  Communicator& c = test::world();
  const size_t total = 1003;
  // Parameter sizes of a small model, announced last to first (as trainer::GradientSync does).
  const std::vector<size_t> params{300, 17, 64, 64, 200, 1, 357};
  std::vector<float> grads(total);
  BucketedAllReduce sync(c, grads.data(), total, 128);
  EXPECT_EQ(sync.buckets(), 8u);  // 7 x 128 + 107
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < total; ++i) grads[i] = grad_value(c.rank(), step, i);
    size_t end = total;
    for (size_t k = params.size(); k-- > 0;) {
      end -= params[k];
      sync.ready(end, params[k]);
      double work = 0;  // the backward of the layer below
      for (int i = 0; i < 2000; ++i) work += static_cast<double>(i) * 1e-9;
      EXPECT_GE(work, 0.0);
    }
    ASSERT_EQ(end, 0u);
    sync.finish();
    // Every rank's gradients as stored floats, summed in rank order (computing them inside the
    // sum would let the compiler fuse the multiply into the add).
    std::vector<std::vector<float>> all(static_cast<size_t>(c.size()), std::vector<float>(total));
    for (int r = 0; r < c.size(); ++r) {
      for (size_t i = 0; i < total; ++i) all[static_cast<size_t>(r)][i] = grad_value(r, step, i);
    }
    for (size_t i = 0; i < total; ++i) {
      float expect = all[0][i];
      for (size_t r = 1; r < all.size(); ++r) expect = expect + all[r][i];
      ASSERT_EQ(grads[i], expect) << "step " << step << " float " << i;
    }
  }
}

TEST(MpiBucketedAllReduce, OverlappingOrMissingRangesAreErrors) {
  std::vector<float> grads(10);
  BucketedAllReduce sync(test::world(), grads.data(), 10, 4);
  sync.ready(6, 4);
  EXPECT_NE(test::error_of([&] { sync.ready(5, 2); }).find("floats from 6 on were announced already"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { sync.finish(); }).find("gradient floats [0, 6) were never announced"),
            std::string::npos);
  sync.ready(0, 6);
  sync.finish();
}

}  // namespace
}  // namespace cadtrain::parallel
