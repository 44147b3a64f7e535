// Teacher rows per micro-batch, read in the background (distill_teacher.h).
#include "trainer/distill_teacher.h"

#include <fmt/format.h>

#include <algorithm>

#include "common/clock.h"
#include "common/error.h"
#include "data/dataset.h"
#include "trainer/batch.h"

namespace cadtrain::trainer {

DistillTeacher::DistillTeacher(const config::DistillConfig& cfg, const data::Dataset& train, uint32_t vocab_size)
    : cfg_(cfg), store_(data::TeacherStore::open(cfg.teacher_path())) {
  store_.check_matches(train, vocab_size, cfg.k());
  const auto offsets = train.doc_offsets();
  doc_offsets_.assign(offsets.begin(), offsets.end());
  args_.k = store_.info().k;
  args_.weight = cfg.weight();
  args_.temperature = cfg.temperature();
  args_.tau_squared = cfg.tau_squared();
}

DistillTeacher::~DistillTeacher() {
  if (pending_.valid()) pending_.wait();
}

void DistillTeacher::read_rows(const data::MicroBatch& mb) {
  const uint64_t k = store_.info().k;
  const size_t n = mb.positions.size();
  ids_.assign(n * k, 0);
  logprobs_.assign(n * k, 0.0f);
  // Each piece is a contiguous run of one document's tokens: its rows are contiguous in the store.
  for (size_t p = 0; p + 1 < mb.cu_seqlens.size(); ++p) {
    const auto begin = static_cast<size_t>(mb.cu_seqlens[p]);
    const auto end = static_cast<size_t>(mb.cu_seqlens[p + 1]);
    if (begin == end) continue;
    const uint64_t doc = mb.doc_ids.at(p);
    if (doc + 1 >= doc_offsets_.size()) fail("micro-batch piece {} names document {} outside the dataset", p, doc);
    const uint64_t first = doc_offsets_[doc] + static_cast<uint64_t>(mb.positions[begin]);
    if (first + (end - begin) > doc_offsets_[doc + 1]) {
      fail("micro-batch piece {} runs past the end of document {}", p, doc);
    }
    store_.read(first, end - begin, ids_.data() + begin * k, logprobs_.data() + begin * k);
  }
}

void DistillTeacher::prefetch(const data::MicroBatch& mb) {
  if (pending_.valid()) fail("DistillTeacher::prefetch: the previous micro-batch's rows were not taken");
  // The layout is copied (a few KiB), so the read does not depend on the caller keeping mb.
  data::MicroBatch layout;
  layout.positions = mb.positions;
  layout.cu_seqlens = mb.cu_seqlens;
  layout.doc_ids = mb.doc_ids;
  pending_ = std::async(std::launch::async, [this, layout = std::move(layout)] { read_rows(layout); });
}

const kernels::TopKDistillArgs* DistillTeacher::wait() {
  if (!pending_.valid()) fail("DistillTeacher::wait: nothing was prefetched");
  const double t0 = now_seconds();
  pending_.get();  // rethrows a read error
  waited_ += now_seconds() - t0;
  args_.ids = ids_.data();
  args_.logprobs = logprobs_.data();
  return &args_;
}

void DistillTeacher::drain() noexcept {
  if (!pending_.valid()) return;
  try {
    pending_.get();
  } catch (...) {  // the step failed already; its error is the one to report
  }
}

double DistillTeacher::take_wait_seconds() {
  const double w = waited_;
  waited_ = 0;
  return w;
}

std::string distill_summary(const config::DistillConfig& cfg, const DistillTeacher& teacher) {
  return fmt::format("lambda {}, tau {}{}, top-{} from {}", cfg.weight(), cfg.temperature(),
                     cfg.tau_squared() ? " (tau^2 scaling)" : "", teacher.k(), teacher.path());
}

void add_distill_metrics(const config::DistillConfig& cfg, DistillTeacher& teacher, double kd_sum, double weight,
                         StepMetrics& m) {
  const double ce = m.loss;
  const double kd = weight > 0 ? kd_sum / weight : 0;
  m.loss = ce + cfg.weight() * kd;
  m.extra.emplace_back("ce", ce);
  m.extra.emplace_back("kd", kd);
  m.extra.emplace_back("teacher_wait_ms", 1e3 * teacher.take_wait_seconds());
}

LossSum forward_backward_micro_batch(Model& model, DistillTeacher* teacher, const data::MicroBatch& mb,
                                     float grad_scale, GradientSync* grad_sync) {
  Batch batch = batch_view(mb);
  if (teacher != nullptr) {
    teacher->prefetch(mb);
    batch.distill = [teacher] { return teacher->wait(); };
  }
  try {
    return model.forward_backward(batch, grad_scale, grad_sync);
  } catch (...) {
    if (teacher != nullptr) teacher->drain();
    throw;
  }
}

}  // namespace cadtrain::trainer
