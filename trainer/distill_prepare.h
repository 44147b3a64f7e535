// `cadtrain distill prepare`: streams a dataset through a teacher checkpoint and writes its top-K
// next-token ids and full-vocabulary log-probabilities per token (data/teacher_store.h).
#pragma once

#include <cstdint>
#include <string>

namespace cadtrain::trainer {

struct DistillPrepareOptions {
  std::string teacher;            // checkpoint file or run directory
  std::string data;               // dataset to score
  std::string out;                // teacher store to write
  uint32_t k = 32;
  uint64_t tokens_per_batch = 0;  // 0: the teacher config's data.tokens_per_micro_batch
};

struct DistillPrepareSummary {
  uint64_t tokens = 0;
  uint64_t batches = 0;
  uint64_t cut_documents = 0;  // longer than a batch: later pieces see no earlier context
  double mean_top_k_mass = 0;  // mean over tokens of the teacher's P_T
  double seconds = 0;
};

// Documents go through the teacher in dataset order, packed whole into batches of up to
// tokens_per_batch tokens (a longer document is cut into pieces that keep their true positions);
// the logits of one batch are reduced to top-K rows right away. The store is written atomically.
DistillPrepareSummary distill_prepare(const DistillPrepareOptions& options);

}  // namespace cadtrain::trainer
