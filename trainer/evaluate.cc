// Evaluation over a dataset (see evaluate.h).
#include "trainer/evaluate.h"

#include <algorithm>
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
  const uint64_t batches = std::min<uint64_t>(max_batches, (dataset.num_tokens() + tokens_per_batch - 1) / tokens_per_batch);
  std::vector<float> row_loss(tokens_per_batch);
  std::vector<uint32_t> row_argmax(tokens_per_batch);
  EvalResult r;
  double loss_sum = 0, weight_sum = 0;
  for (uint64_t b = 0; b < batches; ++b) {
    data::MicroBatch mb = packer.next();
    // The stream wraps into a second pass at the end of the dataset: mask what was seen already.
    const uint64_t fresh = std::min<uint64_t>(tokens_per_batch, dataset.num_tokens() - b * tokens_per_batch);
    std::fill(mb.loss_mask.begin() + static_cast<std::ptrdiff_t>(fresh), mb.loss_mask.end(), 0.0f);
    const LossSum loss = model.evaluate(batch_view(mb), row_loss.data(), row_argmax.data());
    loss_sum += loss.loss_sum;
    weight_sum += loss.weight_sum;
    for (uint64_t i = 0; i < fresh; ++i) {
      if (mb.loss_mask[i] == 0 || mb.is_answer.empty() || !mb.is_answer[i]) continue;
      ++r.answer_tokens;
      r.answer_correct += row_argmax[i] == mb.targets[i] ? 1 : 0;
    }
  }
  r.tokens = static_cast<uint64_t>(weight_sum);
  r.loss = weight_sum > 0 ? loss_sum / weight_sum : 0;
  r.perplexity = std::exp(r.loss);
  r.retrieval_accuracy = r.answer_tokens > 0 ? static_cast<double>(r.answer_correct) / static_cast<double>(r.answer_tokens) : 0;
  return r;
}

}  // namespace cadtrain::trainer
