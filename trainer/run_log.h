// What a run tells its user: a parameter table at start, one line per step (stdout) and the same
// as one JSON object per line in <run dir>/metrics.jsonl, plus evaluation lines.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "trainer/evaluate.h"

namespace cadtrain::trainer {

struct StepMetrics {
  uint64_t step = 0;   // 1-based: optimizer steps completed
  uint64_t total_steps = 0;
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  double seconds = 0;
  uint64_t tokens = 0;     // tokens trained on (micro-batches are not padded)
  uint64_t capacity = 0;   // tokens_per_micro_batch * grad_accumulation: fill = tokens / capacity
  uint64_t cut_tokens = 0; // tokens of documents cut at a micro-batch boundary, after the cut
  double tokens_per_second = 0;
  double mfu = 0;      // model FLOP/s over the machine's calibrated peak (trainer/machine_peak.h), <= 1
  double mfu_vs_sgemm_now = 0;  // over this start-up's sgemm measurement (a busy machine lowers it)
  // time breakdown, seconds
  double data = 0, forward = 0, backward = 0, core_attention = 0, loss_time = 0, optimizer = 0;
  bool skipped = false;  // non-finite loss or gradient, step dropped (on_nonfinite: SKIP_STEP)
  // Further named values (loss terms such as "ce" and "kd"), printed after the loss as
  // "| ce 3.1021 | kd 0.4410" and written as top-level fields of metrics.jsonl.
  std::vector<std::pair<std::string, double>> extra;
};

class RunLog {
 public:
  // Appends to metrics_path when resuming, else truncates it.
  RunLog(const std::string& metrics_path, bool append, uint32_t print_every);
  void table(const std::vector<std::pair<std::string, std::string>>& rows);
  void step(const StepMetrics& m);
  void eval(uint64_t step, const std::string& split, const EvalResult& r);
  void note(const std::string& line);

 private:
  std::ofstream metrics_;
  std::string path_;
  uint32_t print_every_;
};

}  // namespace cadtrain::trainer
