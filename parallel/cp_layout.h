// What the context-parallel attention strategies (ring, TokenRing) share: every rank's sequences,
// gathered once per micro-batch, and the tasks of one rank's queries against another rank's keys.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention_tasks.h"
#include "kernels/core_attention.h"
#include "parallel/communicator.h"

namespace cadtrain::parallel {

// One sequence of some rank: document, true first position, rows in that rank's buffers.
struct CpSeq {
  uint64_t doc = 0;
  int64_t pos0 = 0, row0 = 0, rows = 0;
};

struct CpLayouts {
  std::vector<std::vector<CpSeq>> seqs;  // [rank]
  std::vector<int64_t> rows;             // [rank] rows each rank holds
};

// All-gathers the group's layouts (two small all_gathers; collective). Throws naming `op` and the
// rank when the layout is malformed or has no document ids.
CpLayouts gather_cp_layouts(Communicator& group, const kernels::SequenceLayout& layout, const char* op);

// Tasks of the query sequences `q` (rows in the query buffer) against the key sequences `k` (rows
// in the key buffer): one causal task per pair of the same document whose keys start at or before
// the queries' last position, in rounds whose tasks share no query rows (the forward kernel's rule).
std::vector<std::vector<kernels::AttentionTask>> cp_pair_tasks(const std::vector<CpSeq>& q,
                                                               const std::vector<CpSeq>& k);

// The handle of one part when the strategy runs every part at once (at the last part's forward,
// at part 0's backward): complete once (*done)[layer] is set; waiting earlier is an error.
class CpPartHandle final : public kernels::AttentionHandle {
 public:
  CpPartHandle(const std::vector<bool>* done, int layer, size_t part, const char* what)
      : done_(done), layer_(layer), part_(part), what_(what) {}
  void wait() override;

 private:
  const std::vector<bool>* done_;
  int layer_;
  size_t part_;
  const char* what_;
};

// Sets done[layer], growing done as needed.
void mark_layer_done(std::vector<bool>& done, int layer);

inline ConstBufferView f32_view(const float* p, int64_t count) {
  return {p, ElementType::F32, static_cast<size_t>(count), DeviceId::host()};
}
inline BufferView f32_view(float* p, int64_t count) {
  return {p, ElementType::F32, static_cast<size_t>(count), DeviceId::host()};
}

}  // namespace cadtrain::parallel
