// BucketedAllReduce: data parallelism's gradient synchronisation, independent of the trainer.
// Gradients live in one flat float buffer; the backward announces ranges as they become final
// (ready(), from the end of the buffer towards its start), and each bucket of about bucket_floats
// floats is all-reduced (summed) without blocking as soon as all of it is ready, so that the
// reduction overlaps the backward of the layers below. finish() completes every bucket.
//
// Bucket boundaries are fixed by the buffer size and bucket_floats alone, and every element is
// summed in rank order (Communicator's reductions), so the result is the same bits on every rank
// and in every run of the same layout, whatever the timing. A trainer adapter forwards
// trainer::GradientSync::grads_ready(group) to ready(group.offset, group.count) and finish_step()
// to finish().
#pragma once

#include <cstddef>
#include <vector>

#include "parallel/communicator.h"

namespace cadtrain::parallel {

class BucketedAllReduce {
 public:
  // grads: the flat buffer of `total` floats (host memory for the MPI backend); buckets cover
  // [total - bucket_floats, total), the one below, ..., the first one possibly shorter.
  BucketedAllReduce(Communicator& comm, float* grads, size_t total, size_t bucket_floats);

  // Floats [offset, offset + count) are final for this step. Ranges arrive from the end of the
  // buffer to its start, each ending at or below the previous one's offset (checked: no float is
  // announced twice). Starts the all-reduce of every bucket that became complete, and tests the
  // ones in flight (progress while the backward runs).
  void ready(size_t offset, size_t count);
  // Waits for every bucket; afterwards grads holds the sum over ranks. Checks that the whole
  // buffer was announced, then resets for the next step.
  void finish();

  size_t buckets() const { return bucket_begin_.size(); }
  // Buckets whose reduction had completed before finish() was called, last step (how much of the
  // communication the backward hid).
  size_t completed_before_finish() const { return completed_before_finish_; }

 private:
  Communicator& comm_;
  float* grads_;
  size_t total_;
  std::vector<size_t> bucket_begin_;   // bucket b covers [bucket_begin_[b], bucket_begin_[b+1] or total)
  std::vector<Request> requests_;      // per bucket, started once the bucket is complete
  size_t next_end_;                    // the next range must end at or below this
  size_t next_bucket_;                 // buckets [next_bucket_, buckets()) have been started
  size_t completed_before_finish_ = 0;
};

}  // namespace cadtrain::parallel
