// The model's view of a packed micro-batch.
#pragma once

#include "data/packing.h"
#include "trainer/model.h"

namespace cadtrain::trainer {

inline Batch batch_view(const data::MicroBatch& mb) {
  Batch b;
  b.n = static_cast<int64_t>(mb.tokens.size());
  b.tokens = mb.tokens.data();
  b.targets = mb.targets.data();
  b.loss_mask = mb.loss_mask.data();
  b.positions = mb.positions.data();
  b.cu_seqlens = mb.cu_seqlens.data();
  b.n_seqs = static_cast<int64_t>(mb.cu_seqlens.size()) - 1;
  // Documents travel to core attention (a distributed strategy must know which pieces belong
  // together); a micro-batch without them (tests) leaves them unknown.
  if (mb.doc_ids.size() == static_cast<size_t>(b.n_seqs)) b.doc_ids = mb.doc_ids.data();
  return b;
}

}  // namespace cadtrain::trainer
