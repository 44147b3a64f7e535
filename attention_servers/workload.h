// Batches for the planner: document lengths drawn from a published sample (a JSON array such as
// ../shared/data/doclens_wlbllm.json) or a parametric preset (data.synth), elongated, cut at a
// maximum length, long documents optionally upsampled, and packed into trainer ranks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention_servers/tasks.h"
#include "common/rng.h"
#include "configs/cadtrain.pb.h"

namespace cadtrain::attention_servers {

// Reads a JSON array of positive integer document lengths. Throws cadtrain::Error naming the
// file and the line (for a syntax error) or the index of a bad entry; an empty array is an error.
std::vector<int64_t> load_doclens(const std::string& path);

// Draws document lengths: from `sample` when it is not empty, else from synth's preset.
class LengthSampler {
 public:
  LengthSampler(std::vector<int64_t> sample, const config::SynthConfig& synth, const config::PlannerConfig& planner);
  int64_t draw(Rng& rng) const;

 private:
  int64_t shape(double tokens) const;  // elongate, round, clamp to [1, max]
  std::vector<int64_t> sample_;
  std::vector<double> cumulative_;  // upsampling weights of sample_, cumulative
  config::SynthConfig synth_;
  config::PlannerConfig planner_;
};

// Documents drawn until `tokens` are filled (the last one cut to fit).
std::vector<int64_t> draw_documents(const LengthSampler& sampler, int64_t tokens, Rng& rng);

// Packs documents in order into `ranks` streams of tokens_per_rank tokens; a document that does
// not fit continues on the next rank with its true positions (CAD and context parallelism keep
// its whole prefix). Document ids are their indices.
BatchLayout pack_in_order(const std::vector<int64_t>& docs, uint32_t ranks, int64_t tokens_per_rank);

// Variable-length chunks: whole documents (never cut), largest cost first, each onto the rank with
// the least cost so far, where cost(length) is the caller's compute model; ranks end with equal
// compute as far as the documents allow and unequal token counts (memory).
BatchLayout pack_by_cost(const std::vector<int64_t>& docs, uint32_t ranks, double (*cost)(int64_t, const void*),
                         const void* ctx);

}  // namespace cadtrain::attention_servers
