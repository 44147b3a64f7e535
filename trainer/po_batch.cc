// Preference micro-batches and position synthesis (po_batch.h).
#include "trainer/po_batch.h"

#include <algorithm>  // std::sort, std::max
#include <limits>     // int32 range of positions

#include "common/error.h"

namespace cadtrain::trainer {
namespace {

uint32_t responses_used(const data::PrefsExample& ex, uint32_t m_rejected, uint64_t example) {
  if (m_rejected == 0) return static_cast<uint32_t>(ex.rejected.size());
  if (ex.rejected.size() < m_rejected) {
    fail("preference example {} (line {}) has {} rejected responses, the loss asks for M = {}", example,
         ex.source_line, ex.rejected.size(), m_rejected);
  }
  return m_rejected;
}

}  // namespace

std::vector<int32_t> synthesize_positions(int64_t rows, const PositionSynthesis& synth, Rng& rng) {
  std::vector<int32_t> pos(static_cast<size_t>(rows));
  if (synth.target_length == 0) {
    for (int64_t i = 0; i < rows; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    return pos;
  }
  if (rows > static_cast<int64_t>(synth.target_length)) {
    fail("position synthesis: a sequence of {} tokens does not fit target_length {}", rows, synth.target_length);
  }
  CADTRAIN_CHECK(synth.chunks >= 1, "position synthesis needs at least one chunk");
  const int64_t chunks = std::min<int64_t>(synth.chunks, std::max<int64_t>(rows, 1));
  const uint64_t spare = synth.target_length - static_cast<uint64_t>(rows);  // total gap to spread
  std::vector<uint64_t> offsets(static_cast<size_t>(chunks), 0);
  for (int64_t c = 1; c < chunks; ++c) offsets[static_cast<size_t>(c)] = rng.below(spare + 1);
  std::sort(offsets.begin() + 1, offsets.end());
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = rows * c / chunks, end = rows * (c + 1) / chunks;
    for (int64_t i = begin; i < end; ++i) {
      pos[static_cast<size_t>(i)] = static_cast<int32_t>(static_cast<uint64_t>(i) + offsets[static_cast<size_t>(c)]);
    }
  }
  return pos;
}

int64_t po_example_rows(const data::PrefsExample& ex, uint32_t m_rejected) {
  const auto p = static_cast<int64_t>(ex.prompt.size());
  int64_t rows = p + static_cast<int64_t>(ex.chosen.size()) - 1;
  const size_t m = m_rejected == 0 ? ex.rejected.size() : std::min<size_t>(m_rejected, ex.rejected.size());
  for (size_t j = 0; j < m; ++j) rows += p + static_cast<int64_t>(ex.rejected[j].size()) - 1;
  return rows;
}

PoMicroBatch make_po_micro_batch(const data::PrefsStore& store, std::span<const uint64_t> examples,
                                 uint32_t m_rejected, const PositionSynthesis& synth, uint64_t synth_seed) {
  PoMicroBatch out;
  data::MicroBatch& mb = out.mb;
  mb.cu_seqlens.push_back(0);
  for (const uint64_t e : examples) {
    const data::PrefsExample ex = store.example(e);
    const uint32_t m = responses_used(ex, m_rejected, e);
    size_t longest = ex.chosen.size();
    for (uint32_t j = 0; j < m; ++j) longest = std::max(longest, ex.rejected[j].size());
    const int64_t max_rows = static_cast<int64_t>(ex.prompt.size() + longest) - 1;
    Rng rng(synth_seed, e);
    const std::vector<int32_t> pos = with_context(
        fmt::format("{} example {} (line {})", store.path(), e, ex.source_line),
        [&] { return synthesize_positions(max_rows, synth, rng); });
    // One sequence x ++ y: inputs all but its last token, targets all but its first.
    const auto add_sequence = [&](std::span<const uint32_t> y) {
      const auto row0 = static_cast<int64_t>(mb.tokens.size());
      const size_t n = ex.prompt.size() + y.size();
      const auto at = [&](size_t i) { return i < ex.prompt.size() ? ex.prompt[i] : y[i - ex.prompt.size()]; };
      for (size_t i = 0; i + 1 < n; ++i) {
        mb.tokens.push_back(at(i));
        mb.targets.push_back(at(i + 1));
        mb.loss_mask.push_back(i + 1 >= ex.prompt.size() ? 1.0f : 0.0f);
        mb.positions.push_back(pos[i]);
      }
      mb.cu_seqlens.push_back(static_cast<int32_t>(mb.tokens.size()));
      mb.doc_ids.push_back(mb.doc_ids.size());
      const int64_t first = row0 + static_cast<int64_t>(ex.prompt.size()) - 1;
      return ResponseRows{first, first + static_cast<int64_t>(y.size())};
    };
    PoExampleRows rows;
    rows.example = e;
    rows.source_line = ex.source_line;
    rows.chosen = add_sequence(ex.chosen);
    rows.ref_chosen = ex.ref_chosen;
    for (uint32_t j = 0; j < m; ++j) {
      rows.rejected.push_back(add_sequence(ex.rejected[j]));
      if (!ex.ref_rejected.empty()) rows.ref_rejected.push_back(ex.ref_rejected[j]);
    }
    out.examples.push_back(std::move(rows));
  }
  if (mb.tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail("preference micro-batch of {} rows is too large", mb.tokens.size());
  }
  return out;
}

void response_logps(const PoMicroBatch& b, std::span<const float> row_loss, std::vector<double>& chosen,
                    std::vector<std::vector<double>>& rejected) {
  const auto logp = [&](ResponseRows r) {
    double s = 0;
    for (int64_t i = r.begin; i < r.end; ++i) s -= static_cast<double>(row_loss[static_cast<size_t>(i)]);
    return s;
  };
  chosen.clear();
  rejected.clear();
  for (const PoExampleRows& ex : b.examples) {
    chosen.push_back(logp(ex.chosen));
    rejected.emplace_back();
    for (const ResponseRows r : ex.rejected) rejected.back().push_back(logp(r));
  }
}

}  // namespace cadtrain::trainer
