// Evaluation on a dataset: mean loss, perplexity and, where the dataset marks answer tokens
// (the synthetic corpus), retrieval accuracy: the share of answer tokens the model predicts
// exactly (argmax), which only long-range attention can get right.
//
// One definition everywhere ("eval loss"): the mean next-token loss over every scored token of the
// whole dataset, packed as whole documents (data/packing.h, file order), so that it does not
// depend on the micro-batch size while every document fits in one. `train`'s final evaluation and
// `cadtrain eval` report this. A partial evaluation (`schedule.eval_batches`, `eval --batches`)
// scores the first micro-batches only; eval_scope() names which one a result is.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

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
  uint64_t micro_batches = 0;
  bool whole_dataset = false;     // every document scored (else the first micro_batches only)
  uint64_t cut_tokens = 0;        // tokens of documents longer than a micro-batch, after a cut
};

constexpr uint64_t kWholeDataset = std::numeric_limits<uint64_t>::max();

// Scores the dataset from its start in file order, whole documents packed into micro-batches of
// up to tokens_per_batch tokens, up to max_batches of them (kWholeDataset: all), each token once.
// A dataset without tokens scores nothing (tokens 0).
EvalResult evaluate(Model& model, const data::Dataset& dataset, uint64_t tokens_per_batch,
                    uint64_t max_batches = kWholeDataset);

// "whole file" or "first N micro-batches": what a result's loss is the mean over.
std::string eval_scope(const EvalResult& r);

}  // namespace cadtrain::trainer
