// Bucketed, overlapped gradient all-reduce (parallel/bucketed_all_reduce.h).
#include "parallel/bucketed_all_reduce.h"

namespace cadtrain::parallel {

BucketedAllReduce::BucketedAllReduce(Communicator& comm, float* grads, size_t total, size_t bucket_floats)
    : comm_(comm), grads_(grads), total_(total), next_end_(total) {
  CADTRAIN_CHECK(bucket_floats > 0, "bucket_floats must be > 0");
  // Bucket b starts at total - (buckets - b) * bucket_floats, the first one at 0.
  const size_t n = (total + bucket_floats - 1) / bucket_floats;
  bucket_begin_.assign(n, 0);
  for (size_t b = 1; b < n; ++b) bucket_begin_[b] = total - (n - b) * bucket_floats;
  requests_ = std::vector<Request>(n);
  next_bucket_ = bucket_begin_.size();
}

void BucketedAllReduce::ready(size_t offset, size_t count) {
  CADTRAIN_CHECK(offset + count <= next_end_,
                 "{}: gradient floats [{}, {}) announced, but floats from {} on were announced already (ranges must "
                 "arrive from the end of the buffer to its start, each once per step)",
                 comm_.watchdog().identity().describe(), offset, offset + count, next_end_);
  next_end_ = offset;
  // Every bucket starting at or above next_end_ is complete: start it (last bucket first, the
  // same order on every rank).
  while (next_bucket_ > 0 && bucket_begin_[next_bucket_ - 1] >= next_end_) {
    --next_bucket_;
    const size_t begin = bucket_begin_[next_bucket_];
    const size_t end = next_bucket_ + 1 < bucket_begin_.size() ? bucket_begin_[next_bucket_ + 1] : total_;
    const BufferView bucket{grads_ + begin, ElementType::F32, end - begin, DeviceId::host()};
    requests_[next_bucket_] = comm_.iall_reduce(bucket, bucket, ReduceOp::SUM);
  }
  for (size_t b = next_bucket_; b < requests_.size(); ++b) requests_[b].test();
}

void BucketedAllReduce::finish() {
  CADTRAIN_CHECK(next_end_ == 0, "{}: gradient floats [0, {}) were never announced this step",
                 comm_.watchdog().identity().describe(), next_end_);
  completed_before_finish_ = 0;
  for (size_t b = requests_.size(); b-- > 0;) {
    if (requests_[b].test()) ++completed_before_finish_;
  }
  for (size_t b = requests_.size(); b-- > 0;) requests_[b].wait();
  for (auto& r : requests_) r = Request();
  next_end_ = total_;
  next_bucket_ = bucket_begin_.size();
}

}  // namespace cadtrain::parallel
