// The run's datasets when they come from the embedded synthetic corpus: generate the train and
// eval files a DataConfig names when they are missing (or always, when forced).
#pragma once

#include <string>
#include <vector>

#include "configs/cadtrain.pb.h"
#include "data/synth_corpus.h"

namespace cadtrain::data {

// The held-out split: the same distribution, seed + 1, a tenth of the documents (at least 1).
config::SynthConfig eval_split(const config::SynthConfig& train);

struct GeneratedDataset {
  std::string path;
  SynthSummary summary;
  double seconds = 0;
};

// Writes data.train_path (from data.synth) and data.eval_path (from eval_split) where missing,
// or both when `force`; creates parent directories. Returns what it wrote.
std::vector<GeneratedDataset> ensure_synthetic_datasets(const config::DataConfig& data, bool force);

}  // namespace cadtrain::data
