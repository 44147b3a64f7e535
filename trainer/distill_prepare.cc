// Teacher top-K extraction (distill_prepare.h).
#include "trainer/distill_prepare.h"

#include <algorithm>  // std::partial_sort, std::min
#include <cmath>      // std::exp, std::log
#include <numeric>    // std::iota
#include <vector>

#include "common/clock.h"          // now_seconds
#include "common/error.h"          // fail
#include "data/dataset.h"          // the dataset scored
#include "data/teacher_store.h"    // the store written
#include "trainer/model.h"         // Model::logits
#include "trainer/session.h"       // load_model

namespace cadtrain::trainer {
namespace {

// One batch of consecutive document pieces, in dataset order.
struct PieceBatch {
  std::vector<uint32_t> tokens, targets;
  std::vector<float> mask;
  std::vector<int32_t> positions, cu_seqlens{0};
};

// Row z[V] -> its k largest logits' ids (ties by lower id) and log-softmax values over all V.
// order: V ints of workspace. Returns the top-K probability mass.
double top_k_row(const float* z, int64_t v, uint32_t k, std::vector<int32_t>& order, int32_t* ids, float* logprobs) {
  double m = z[0];
  for (int64_t j = 1; j < v; ++j) m = std::max(m, static_cast<double>(z[j]));
  double sum = 0;
  for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(z[j]) - m);
  const double lse = m + std::log(sum);
  order.resize(static_cast<size_t>(v));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [z](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  double mass = 0;
  for (uint32_t i = 0; i < k; ++i) {
    ids[i] = order[i];
    const double lp = static_cast<double>(z[order[i]]) - lse;
    logprobs[i] = static_cast<float>(std::min(lp, 0.0));
    mass += std::exp(lp);
  }
  return mass;
}

}  // namespace

DistillPrepareSummary distill_prepare(const DistillPrepareOptions& o) {
  const double t0 = now_seconds();
  const data::Dataset ds = data::Dataset::open(o.data);
  LoadedModel teacher = load_model(o.teacher, static_cast<int64_t>(o.tokens_per_batch));
  const uint64_t tpb = o.tokens_per_batch > 0 ? o.tokens_per_batch : teacher.cfg.data().tokens_per_micro_batch();
  Model& model = *teacher.session.model;
  const int64_t v = model.dims().vocab;
  if (ds.vocab_size() > static_cast<uint64_t>(v)) {
    fail("{} has vocab_size {} > the teacher's {} ({})", ds.path(), ds.vocab_size(), v, teacher.path);
  }
  if (o.k == 0 || o.k > static_cast<uint64_t>(v)) fail("--k {} must be in [1, the teacher's vocab_size {}]", o.k, v);

  data::TeacherStoreInfo info;
  info.k = o.k;
  info.vocab_size = static_cast<uint32_t>(v);
  info.n_tokens = ds.num_tokens();
  info.n_docs = ds.num_docs();
  info.dataset_fingerprint = data::dataset_fingerprint(ds);
  info.teacher = teacher.path;
  data::TeacherStoreWriter writer(o.out, info);

  DistillPrepareSummary s;
  std::vector<float> logits(tpb * static_cast<uint64_t>(v));
  std::vector<int32_t> ids(tpb * o.k);
  std::vector<float> logprobs(tpb * o.k);
  std::vector<double> mass(tpb);
  PieceBatch b;
  auto flush = [&] {
    if (b.tokens.empty()) return;
    Batch view;
    view.n = static_cast<int64_t>(b.tokens.size());
    view.tokens = b.tokens.data();
    view.targets = b.targets.data();
    view.loss_mask = b.mask.data();
    view.positions = b.positions.data();
    view.cu_seqlens = b.cu_seqlens.data();
    view.n_seqs = static_cast<int64_t>(b.cu_seqlens.size()) - 1;
    model.logits(view, logits.data());
#pragma omp parallel
    {
      std::vector<int32_t> order;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < view.n; ++i) {
        mass[i] = top_k_row(logits.data() + i * v, v, o.k, order, ids.data() + i * o.k, logprobs.data() + i * o.k);
      }
    }
    for (int64_t i = 0; i < view.n; ++i) s.mean_top_k_mass += mass[i];
    writer.append(ids.data(), logprobs.data(), static_cast<uint64_t>(view.n));
    s.tokens += static_cast<uint64_t>(view.n);
    ++s.batches;
    b = PieceBatch{};
  };

  std::vector<uint32_t> doc;
  for (uint64_t d = 0; d < ds.num_docs(); ++d) {
    doc = ds.read_doc(d);
    if (doc.size() > tpb) ++s.cut_documents;
    for (uint64_t offset = 0; offset < doc.size();) {
      if (b.tokens.size() == tpb) flush();
      const uint64_t n = std::min<uint64_t>(doc.size() - offset, tpb - b.tokens.size());
      // A piece that does not fit whole goes to a fresh batch rather than being cut, when it can.
      if (n < doc.size() - offset && !b.tokens.empty() && doc.size() - offset <= tpb) {
        flush();
        continue;
      }
      for (uint64_t i = 0; i < n; ++i) {
        b.tokens.push_back(doc[offset + i]);
        b.targets.push_back(0);
        b.mask.push_back(0.0f);
        b.positions.push_back(static_cast<int32_t>(offset + i));
      }
      b.cu_seqlens.push_back(static_cast<int32_t>(b.tokens.size()));
      offset += n;
    }
  }
  flush();
  writer.finish();
  s.mean_top_k_mass = s.tokens > 0 ? s.mean_top_k_mass / static_cast<double>(s.tokens) : 0;
  s.seconds = now_seconds() - t0;
  return s;
}

}  // namespace cadtrain::trainer
