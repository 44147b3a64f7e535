// Document-length sampling and packing for the planner.
#include "attention_servers/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "common/error.h"
#include "data/length_presets.h"

namespace cadtrain::attention_servers {

std::vector<int64_t> load_doclens(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open the document-length file", path);
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    const size_t at = std::min<size_t>(e.byte, text.size());
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at ? at - 1 : 0), '\n');
    fail("{}:{}: not valid JSON ({})", path, line, e.what());
  }
  if (!j.is_array()) fail("{}: expected a JSON array of document lengths", path);
  if (j.empty()) fail("{}: the array of document lengths is empty", path);
  std::vector<int64_t> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      fail("{}: entry {} ({}) is not a positive integer document length", path, i, v.dump());
    }
    out.push_back(v.get<int64_t>());
  }
  return out;
}

LengthSampler::LengthSampler(std::vector<int64_t> sample, const config::SynthConfig& synth,
                             const config::PlannerConfig& planner)
    : sample_(std::move(sample)), synth_(synth), planner_(planner) {
  double total = 0;
  for (int64_t len : sample_) {
    const bool is_long = shape(static_cast<double>(len)) >= static_cast<int64_t>(planner_.upsample_min_tokens());
    total += is_long ? planner_.upsample_long() : 1.0;
    cumulative_.push_back(total);
  }
}

int64_t LengthSampler::shape(double tokens) const {
  const double scaled = std::round(tokens * planner_.elongate());
  return std::clamp<int64_t>(static_cast<int64_t>(scaled), 1, static_cast<int64_t>(planner_.max_doc_tokens()));
}

int64_t LengthSampler::draw(Rng& rng) const {
  if (!sample_.empty()) {
    const double u = rng.uniform() * cumulative_.back();
    const size_t i = static_cast<size_t>(std::upper_bound(cumulative_.begin(), cumulative_.end(), u) - cumulative_.begin());
    return shape(static_cast<double>(sample_[std::min(i, sample_.size() - 1)]));
  }
  // Parametric preset; upsampling by rejection: a short draw is kept with 1 / upsample_long.
  while (true) {
    const int64_t len = shape(data::sample_length_ratio(synth_, rng) * static_cast<double>(synth_.mean_doc_tokens()));
    if (len >= static_cast<int64_t>(planner_.upsample_min_tokens()) || rng.uniform() * planner_.upsample_long() < 1.0) {
      return len;
    }
  }
}

std::vector<int64_t> draw_documents(const LengthSampler& sampler, int64_t tokens, Rng& rng) {
  std::vector<int64_t> docs;
  int64_t filled = 0;
  while (filled < tokens) {
    const int64_t len = std::min(sampler.draw(rng), tokens - filled);
    docs.push_back(len);
    filled += len;
  }
  return docs;
}

BatchLayout pack_in_order(const std::vector<int64_t>& docs, uint32_t ranks, int64_t tokens_per_rank) {
  BatchLayout b;
  b.ranks.resize(ranks);
  uint32_t r = 0;
  int64_t used = 0;
  for (size_t d = 0; d < docs.size() && r < ranks; ++d) {
    int64_t pos = 0;
    while (pos < docs[d] && r < ranks) {
      const int64_t take = std::min(docs[d] - pos, tokens_per_rank - used);
      b.ranks[r].push_back(Sequence{d, pos, take});
      pos += take;
      used += take;
      if (used == tokens_per_rank) {
        ++r;
        used = 0;
      }
    }
  }
  return b;
}

BatchLayout pack_by_cost(const std::vector<int64_t>& docs, uint32_t ranks, double (*cost)(int64_t, const void*),
                         const void* ctx) {
  std::vector<double> c(docs.size());
  std::vector<size_t> order(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    c[i] = cost(docs[i], ctx);
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return c[a] > c[b]; });
  BatchLayout b;
  b.ranks.resize(ranks);
  std::priority_queue<std::pair<double, int64_t>> least;  // (-cost, -rank): least cost, lowest rank
  for (uint32_t r = 0; r < ranks; ++r) least.push({0.0, -static_cast<int64_t>(r)});
  for (size_t d : order) {
    auto [neg_cost, neg_rank] = least.top();
    least.pop();
    b.ranks[static_cast<size_t>(-neg_rank)].push_back(Sequence{d, 0, docs[d]});
    least.push({neg_cost - c[d], neg_rank});
  }
  return b;
}

}  // namespace cadtrain::attention_servers
