// Preference examples as packed micro-batches for the model, and position synthesis for LOGO.
//
// Each response y of an example with prompt x becomes its own sequence s = x ++ y: inputs
// s[0 .. |s|-2], next-token targets s[1 .. |s|-1] (the usual one-token shift), so rows
// [|x|-1, |s|-1) of the sequence predict exactly y's tokens and log pi(y|x) is minus the sum of
// their cross-entropies. Sequences never attend to each other (one cu_seqlens entry each).
//
// Position synthesis (LOGO / PoSE style): the rows of a sequence are cut into `chunks`
// contiguous chunks of near-equal size; chunk c is moved up by an offset o_c, with o_0 = 0 and
// o_1 <= ... <= o_{chunks-1} sorted uniform draws in [0, target_length - rows]. Positions stay
// contiguous inside a chunk, strictly increase, and the last one is < target_length, so a short
// example trains relative distances up to target_length. Causal masking follows rows, not
// positions (kernels/attention_tasks.h), so only RoPE sees the synthesized positions. All
// responses of one example share one position map, so their common prompt gets the same
// positions in each.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/rng.h"
#include "data/packing.h"
#include "data/prefs_store.h"

namespace cadtrain::trainer {

struct PositionSynthesis {
  uint32_t target_length = 0;  // 0: off (positions 0, 1, 2, ...)
  uint32_t chunks = 2;
};

// Positions of `rows` consecutive rows under synthesis (see above); throws if rows >
// target_length. With target_length 0, 0 .. rows-1.
std::vector<int32_t> synthesize_positions(int64_t rows, const PositionSynthesis& synth, Rng& rng);

// Rows [begin, end) of a micro-batch whose targets are one response's tokens.
struct ResponseRows {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

struct PoExampleRows {
  uint64_t example = 0;       // index in the store
  uint64_t source_line = 0;   // JSONL line, for messages
  ResponseRows chosen;
  std::vector<ResponseRows> rejected;
  double ref_chosen = 0;      // from the store (0 when it has none)
  std::vector<double> ref_rejected;
};

struct PoMicroBatch {
  data::MicroBatch mb;  // loss_mask is 1 on response rows, 0 on prompt rows
  std::vector<PoExampleRows> examples;
};

// Rows an example takes in a micro-batch: sum over its first m responses (chosen + m rejected;
// m = 0: all) of |x| + |y| - 1.
int64_t po_example_rows(const data::PrefsExample& ex, uint32_t m_rejected);

// Packs the given examples (chosen and the first m_rejected rejected responses of each; 0: all)
// into one micro-batch. With synth on, example e's position map is drawn from Rng(synth_seed, e),
// so it does not depend on which micro-batch or rank the example lands in.
PoMicroBatch make_po_micro_batch(const data::PrefsStore& store, std::span<const uint64_t> examples,
                                 uint32_t m_rejected, const PositionSynthesis& synth, uint64_t synth_seed);

// Sum of per-row losses over each response's rows: minus log pi(y|x) of every response.
void response_logps(const PoMicroBatch& b, std::span<const float> row_loss, std::vector<double>& chosen,
                    std::vector<std::vector<double>>& rejected);

}  // namespace cadtrain::trainer
