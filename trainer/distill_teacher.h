// The teacher side of a distillation run: the rows of the teacher store that belong to each packed
// micro-batch, read in the background while the model runs its layers, so the read never stalls
// the step (the LM head waits for it only if it is still running).
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"
#include "data/packing.h"
#include "data/teacher_store.h"
#include "kernels/backend.h"
#include "trainer/model.h"
#include "trainer/run_log.h"

namespace cadtrain::data {
class Dataset;
}

namespace cadtrain::trainer {

class DistillTeacher {
 public:
  // Opens cfg.teacher_path and checks it belongs to `train` and a student of `vocab_size` tokens.
  DistillTeacher(const config::DistillConfig& cfg, const data::Dataset& train, uint32_t vocab_size);
  ~DistillTeacher();

  uint32_t k() const { return store_.info().k; }
  const std::string& path() const { return store_.path(); }

  // Starts reading the rows of mb's tokens; one micro-batch at a time (the previous one's rows
  // must have been taken by wait()).
  void prefetch(const data::MicroBatch& mb);
  // The rows of the micro-batch last prefetched, as LM-head distillation arguments; rethrows a
  // read error. The result stays valid until the next prefetch().
  const kernels::TopKDistillArgs* wait();
  // Waits for a read in flight and drops its rows (after a failed step).
  void drain() noexcept;
  // Seconds the step spent waiting for reads (0 when they finished in time), since the last call.
  double take_wait_seconds();

 private:
  void read_rows(const data::MicroBatch& mb);

  config::DistillConfig cfg_;
  data::TeacherStore store_;
  std::vector<uint64_t> doc_offsets_;
  std::vector<int32_t> ids_;
  std::vector<float> logprobs_;
  kernels::TopKDistillArgs args_;
  std::future<void> pending_;
  double waited_ = 0;
};

// "lambda 0.5, tau 2 (tau^2), top-32 from <store>" for the run's parameter table.
std::string distill_summary(const config::DistillConfig& cfg, const DistillTeacher& teacher);

// Turns the step's CE-only loss into the objective CE + lambda * KD and adds "ce" and "kd" (and
// the teacher-read wait, in ms) to the step's fields.
void add_distill_metrics(const config::DistillConfig& cfg, DistillTeacher& teacher, double kd_sum, double weight,
                         StepMetrics& m);

// One micro-batch's forward and backward, with the teacher's rows when teacher is not null (read
// in the background while the layers run).
LossSum forward_backward_micro_batch(Model& model, DistillTeacher* teacher, const data::MicroBatch& mb,
                                     float grad_scale, GradientSync* grad_sync);

}  // namespace cadtrain::trainer
