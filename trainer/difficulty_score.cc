// Per-document difficulty from reference models (see difficulty_score.h).
#include "trainer/difficulty_score.h"

#include "common/error.h"   // fail()
#include "data/dataset.h"   // documents
#include "data/packing.h"   // file-order packing of whole documents
#include "trainer/batch.h"  // batch_view

namespace cadtrain::trainer {

DocumentScores score_documents(Model& model, const data::Dataset& dataset, uint64_t tokens_per_batch) {
  const uint64_t n_docs = dataset.num_docs();
  DocumentScores s;
  s.loss_sum.assign(n_docs, 0.0);
  s.scored.assign(n_docs, 0);
  s.answers.assign(n_docs, 0);
  s.answers_right.assign(n_docs, 0);
  if (dataset.num_tokens() == 0) return s;
  data::PackerOptions options;
  options.tokens_per_micro_batch = tokens_per_batch;
  options.shuffle = false;
  data::Packer packer(dataset, options);
  std::vector<float> row_loss(tokens_per_batch);
  std::vector<uint32_t> row_argmax(tokens_per_batch);
  // The packer's first epoch is the whole file, each token once.
  while (packer.position().epoch == 0) {
    const data::MicroBatch mb = packer.next();
    model.evaluate(batch_view(mb), row_loss.data(), row_argmax.data());
    for (size_t q = 0; q < mb.doc_ids.size(); ++q) {
      const uint64_t doc = mb.doc_ids[q];
      for (auto i = static_cast<size_t>(mb.cu_seqlens[q]); i < static_cast<size_t>(mb.cu_seqlens[q + 1]); ++i) {
        if (mb.loss_mask[i] == 0) continue;
        s.loss_sum[doc] += row_loss[i];
        ++s.scored[doc];
        if (!mb.is_answer[i]) continue;
        ++s.answers[doc];
        s.answers_right[doc] += row_argmax[i] == mb.targets[i] ? 1 : 0;
      }
    }
  }
  return s;
}

std::vector<float> mean_loss_difficulty(const DocumentScores& scores) {
  std::vector<float> out(scores.loss_sum.size(), 0.0f);
  for (size_t d = 0; d < out.size(); ++d) {
    if (scores.scored[d] > 0) out[d] = static_cast<float>(scores.loss_sum[d] / static_cast<double>(scores.scored[d]));
  }
  return out;
}

std::vector<float> answer_difficulty(const std::vector<DocumentScores>& per_model) {
  if (per_model.empty()) fail("no model to score answers with");
  const size_t n_docs = per_model.front().answers.size();
  uint64_t with_answers = 0;
  for (size_t m = 0; m < per_model.size(); ++m) {
    if (per_model[m].answers.size() != n_docs) {
      fail("model {} scored {} documents, model 0 scored {}", m, per_model[m].answers.size(), n_docs);
    }
  }
  std::vector<float> out(n_docs, 0.0f);
  for (size_t d = 0; d < n_docs; ++d) {
    if (per_model.front().answers[d] == 0) continue;
    ++with_answers;
    uint64_t right = 0;
    for (const DocumentScores& s : per_model) right += s.answers_right[d] == s.answers[d] ? 1 : 0;
    out[d] = static_cast<float>(1.0 - static_cast<double>(right) / static_cast<double>(per_model.size()));
  }
  if (with_answers == 0) fail("no document has answer tokens (/answer_mask): score by loss instead");
  return out;
}

}  // namespace cadtrain::trainer
