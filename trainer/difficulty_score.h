// Scoring documents for curriculum loading (data/curriculum.h): a per-document difficulty from
// reference models, written to a dataset's /difficulty by `cadtrain data score`.
//
// Both scores walk the dataset once in file order, whole documents packed into micro-batches
// (data/packing.h, no shuffle); a document longer than a micro-batch is scored in pieces, each
// without the context of the pieces before it (so its loss is higher than with its whole prefix).
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/model.h"

namespace cadtrain::data {
class Dataset;
}

namespace cadtrain::trainer {

struct DocumentScores {
  std::vector<double> loss_sum;         // [n_docs] next-token loss summed over scored tokens
  std::vector<uint64_t> scored;         // [n_docs] tokens with a next token
  std::vector<uint64_t> answers;        // [n_docs] answer tokens (datasets with /answer_mask)
  std::vector<uint64_t> answers_right;  // [n_docs] of them predicted exactly (argmax)
};

// One model's per-document sums over the whole dataset.
DocumentScores score_documents(Model& model, const data::Dataset& dataset, uint64_t tokens_per_batch);

// Mean loss per document (0 for a document with no scored token): higher is harder.
std::vector<float> mean_loss_difficulty(const DocumentScores& scores);

// 1 - the share of the models that predict every answer token of a document exactly; a document
// without answer tokens gets 0 (nothing to get wrong). Throws unless every entry covers the same
// number of documents and at least one document has answer tokens.
std::vector<float> answer_difficulty(const std::vector<DocumentScores>& per_model);

}  // namespace cadtrain::trainer
