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

// Packs whole documents (largest first, each into the rank with the most room) as data
// parallelism with variable-length documents does; a document that fits nowhere whole is cut and
// its pieces attend only within themselves (separate document ids).
BatchLayout pack_best_fit(const std::vector<int64_t>& docs, uint32_t ranks, int64_t tokens_per_rank);

}  // namespace cadtrain::attention_servers
