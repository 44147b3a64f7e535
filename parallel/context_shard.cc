// Context-parallel sharding (see context_shard.h).
#include "parallel/context_shard.h"

#include "common/error.h"

namespace cadtrain::parallel {

ContextShard shard_for_context_rank(const kernels::SequenceLayout& global, int ranks, int rank, bool zigzag) {
  kernels::check_layout(global, "shard_for_context_rank");
  CADTRAIN_CHECK(ranks >= 1 && rank >= 0 && rank < ranks, "shard_for_context_rank: rank {} of {} ranks", rank,
                 ranks);
  const int64_t chunks = zigzag ? 2 * ranks : ranks;
  const std::vector<int64_t> mine =
      zigzag ? std::vector<int64_t>{rank, 2 * ranks - 1 - rank} : std::vector<int64_t>{rank};
  ContextShard shard;
  shard.cu_seqlens.push_back(0);
  for (int64_t s = 0; s < global.n_seqs; ++s) {
    const int64_t s0 = global.cu_seqlens[s], len = global.cu_seqlens[s + 1] - s0;
    const int64_t pos0 = global.first_pos != nullptr ? global.first_pos[s] : 0;
    const uint64_t doc = global.doc_ids != nullptr ? global.doc_ids[s] : static_cast<uint64_t>(s);
    for (const int64_t c : mine) {
      const int64_t a = len * c / chunks, b = len * (c + 1) / chunks;
      if (b <= a) continue;
      for (int64_t i = a; i < b; ++i) shard.rows.push_back(s0 + i);
      shard.cu_seqlens.push_back(static_cast<int32_t>(shard.rows.size()));
      shard.first_pos.push_back(static_cast<int32_t>(pos0 + a));
      shard.doc_ids.push_back(doc);
    }
  }
  return shard;
}

}  // namespace cadtrain::parallel
