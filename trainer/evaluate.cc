// Evaluation over a dataset (see evaluate.h).
#include "trainer/evaluate.h"

#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "data/dataset.h"
#include "data/packing.h"
#include "trainer/batch.h"

namespace cadtrain::trainer {

EvalResult evaluate(Model& model, const data::Dataset& dataset, uint64_t tokens_per_batch, uint64_t max_batches) {
  data::PackerOptions options;
  options.tokens_per_micro_batch = tokens_per_batch;
  options.shuffle = false;
  data::Packer packer(dataset, options);
  std::vector<float> row_loss(tokens_per_batch);
  std::vector<uint32_t> row_argmax(tokens_per_batch);
  EvalResult r;
  if (dataset.num_tokens() == 0) return r;  // scores nothing; callers say so with the dataset's name
  double loss_sum = 0, weight_sum = 0;
  // The packer's first epoch is the whole file, each token once; it ends with its last batch.
  while (r.micro_batches < max_batches && packer.position().epoch == 0) {
    const data::MicroBatch mb = packer.next();
    const LossSum loss = model.evaluate(batch_view(mb), row_loss.data(), row_argmax.data());
    loss_sum += loss.loss_sum;
    weight_sum += loss.weight_sum;
    r.cut_tokens += mb.cut_tokens;
    ++r.micro_batches;
    for (size_t i = 0; i < mb.tokens.size(); ++i) {
      if (mb.loss_mask[i] == 0 || !mb.is_answer[i]) continue;
      ++r.answer_tokens;
      r.answer_correct += row_argmax[i] == mb.targets[i] ? 1 : 0;
    }
  }
  r.whole_dataset = packer.position().epoch > 0;
  r.tokens = static_cast<uint64_t>(weight_sum);
  r.loss = weight_sum > 0 ? loss_sum / weight_sum : 0;
  r.perplexity = std::exp(r.loss);
  r.retrieval_accuracy = r.answer_tokens > 0 ? static_cast<double>(r.answer_correct) / static_cast<double>(r.answer_tokens) : 0;
  return r;
}

std::string eval_scope(const EvalResult& r) {
  return r.whole_dataset ? std::string("whole file") : fmt::format("first {} micro-batches", r.micro_batches);
}

}  // namespace cadtrain::trainer
