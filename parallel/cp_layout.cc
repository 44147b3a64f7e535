// Context-parallel layouts and pair tasks (see cp_layout.h).
#include "parallel/cp_layout.h"

#include <algorithm>
#include <utility>

#include "common/error.h"

namespace cadtrain::parallel {

CpLayouts gather_cp_layouts(Communicator& group, const kernels::SequenceLayout& layout, const char* op) {
  kernels::check_layout(layout, op);
  CADTRAIN_CHECK(layout.n_seqs == 0 || layout.doc_ids != nullptr,
                 "{}: the layout of rank {} of {} has no document ids (pieces of a document on different ranks are "
                 "matched by id)",
                 op, group.rank(), group.name());
  const int P = group.size();
  const auto my_seqs = static_cast<uint64_t>(layout.n_seqs);
  std::vector<uint64_t> counts(static_cast<size_t>(P));
  group.all_gather(host_view(std::span<const uint64_t>(&my_seqs, 1)), host_view(counts));
  // (doc, first position, rows) records, padded to the longest list.
  const uint64_t width = *std::max_element(counts.begin(), counts.end());
  std::vector<uint64_t> mine(3 * width, 0), all(3 * width * static_cast<size_t>(P));
  for (int64_t s = 0; s < layout.n_seqs; ++s) {
    mine[3 * s] = layout.doc_ids[s];
    mine[3 * s + 1] = static_cast<uint64_t>(layout.first_pos != nullptr ? layout.first_pos[s] : 0);
    mine[3 * s + 2] = static_cast<uint64_t>(layout.cu_seqlens[s + 1] - layout.cu_seqlens[s]);
  }
  group.all_gather(host_view(std::as_const(mine)), host_view(all));
  CpLayouts out;
  out.seqs.resize(static_cast<size_t>(P));
  out.rows.assign(static_cast<size_t>(P), 0);
  for (size_t j = 0; j < static_cast<size_t>(P); ++j) {
    int64_t row = 0;
    for (uint64_t s = 0; s < counts[j]; ++s) {
      const uint64_t* rec = all.data() + 3 * (width * j + s);
      out.seqs[j].push_back({rec[0], static_cast<int64_t>(rec[1]), row, static_cast<int64_t>(rec[2])});
      row += static_cast<int64_t>(rec[2]);
    }
    out.rows[j] = row;
  }
  return out;
}

std::vector<std::vector<kernels::AttentionTask>> cp_pair_tasks(const std::vector<CpSeq>& q,
                                                               const std::vector<CpSeq>& k) {
  std::vector<std::vector<kernels::AttentionTask>> rounds;
  for (const CpSeq& a : q) {
    size_t round = 0;
    for (const CpSeq& b : k) {
      if (b.doc != a.doc || a.rows == 0 || b.rows == 0 || b.pos0 > a.pos0 + a.rows - 1) continue;
      if (rounds.size() <= round) rounds.emplace_back();
      rounds[round++].push_back({a.row0, a.row0 + a.rows, b.row0, b.row0 + b.rows, a.pos0, b.pos0, true});
    }
  }
  return rounds;
}

void CpPartHandle::wait() {
  const auto l = static_cast<size_t>(layer_);
  CADTRAIN_CHECK(l < done_->size() && (*done_)[l],
                 "{} of layer {}, part {}: waited on before the call that runs every part (the last part's "
                 "forward, part 0's backward)",
                 what_, layer_, part_);
}

void mark_layer_done(std::vector<bool>& done, int layer) {
  const auto l = static_cast<size_t>(layer);
  if (done.size() <= l) done.resize(l + 1, false);
  done[l] = true;
}

}  // namespace cadtrain::parallel
