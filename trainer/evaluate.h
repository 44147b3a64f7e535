// Evaluation on a dataset: mean loss, perplexity and, where the dataset marks answer tokens
// (the synthetic corpus), retrieval accuracy: the share of answer tokens the model predicts
// exactly (argmax), which only long-range attention can get right.
#pragma once

#include <cstdint>

#include "trainer/model.h"

namespace cadtrain::data {
class Dataset;
}

namespace cadtrain::trainer {

struct EvalResult {
  double loss = 0;
  double perplexity = 0;
  uint64_t tokens = 0;          // tokens with a target that were scored
  uint64_t answer_tokens = 0;
  uint64_t answer_correct = 0;
  double retrieval_accuracy = 0;  // answer_correct / answer_tokens (0 when none)
};

// Scores the dataset from its start in file order, up to max_batches micro-batches of
// tokens_per_batch tokens, never counting a token twice.
EvalResult evaluate(Model& model, const data::Dataset& dataset, uint64_t tokens_per_batch, uint64_t max_batches);

}  // namespace cadtrain::trainer
