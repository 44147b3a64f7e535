// Generating the run's synthetic datasets on demand (see default_corpus.h).
#include "data/default_corpus.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "common/error.h"

namespace cadtrain::data {

config::SynthConfig eval_split(const config::SynthConfig& train) {
  config::SynthConfig eval = train;
  eval.set_seed(train.seed() + 1);
  eval.set_n_docs(std::max<uint64_t>(1, train.n_docs() / 10));
  return eval;
}

std::vector<GeneratedDataset> ensure_synthetic_datasets(const config::DataConfig& data, bool force) {
  std::vector<GeneratedDataset> written;
  const auto make = [&](const std::string& path, const config::SynthConfig& synth) {
    if (path.empty() || (!force && std::filesystem::exists(path))) return;
    const auto parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) fail("cannot create directory {} for {}: {}", parent.string(), path, ec.message());
    const auto start = std::chrono::steady_clock::now();
    GeneratedDataset g{path, write_synthetic_corpus(synth, path), 0};
    g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    written.push_back(g);
  };
  make(data.train_path(), data.synth());
  make(data.eval_path(), eval_split(data.synth()));
  return written;
}

}  // namespace cadtrain::data
