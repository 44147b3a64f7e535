// Writes the seed inputs of the dataset and checkpoint fuzzers into <dir>/dataset and
// <dir>/checkpoint: small valid files from the project's own writers, so that mutations start
// from files that pass every check.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "trainer/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 1;
  }
  namespace fs = std::filesystem;
  const fs::path dir = argv[1];
  fs::create_directories(dir / "dataset");
  for (const bool with_mask : {false, true}) {
    cadtrain::data::DatasetWriterOptions options;
    options.vocab_size = 64;
    options.with_answer_mask = with_mask;
    options.with_difficulty = with_mask;
    options.chunk_tokens = 16;
    cadtrain::data::DatasetWriter writer((dir / "dataset" / (with_mask ? "masked.h5" : "plain.h5")).string(), options);
    for (uint32_t d = 0; d < 5; ++d) {
      std::vector<uint32_t> tokens(3 + 7 * d, d);
      std::vector<uint8_t> mask(tokens.size(), d % 2);
      writer.add_document(tokens, 0.5f * static_cast<float>(d), with_mask ? mask : std::vector<uint8_t>{});
    }
    writer.finish();
  }
  std::vector<float> w(24, 0.25f), m(24, 0.0f), v(24, 1.0f);
  cadtrain::trainer::CheckpointTensors tensors;
  tensors.params.push_back({"w", {4, 6}, w.data()});
  tensors.adam_m.push_back({"w", {4, 6}, m.data()});
  tensors.adam_v.push_back({"w", {4, 6}, v.data()});
  cadtrain::trainer::TrainingState state;
  state.step = 3;
  state.run_id = 42;
  state.config_text = "model { n_layers: 1 }\n";
  cadtrain::trainer::save_checkpoint((dir / "checkpoint").string(), state, tensors, 1);
  return 0;
}
