// SentencePiece tokenizers: training (quiet, tolerant of small corpora, tuned for exact round
// trips), loading a .model file, and picking a dataset's tokenizer from its attributes.
//
// Round trip: training uses identity normalization, keeps every space (no dummy prefix, no
// collapsing) and byte_fallback, so decode(encode(text)) == text for any valid UTF-8 text (NUL
// bytes included): characters outside the vocabulary (newlines too, which training never sees as
// it reads lines) become byte pieces. Not exact: invalid UTF-8, which the normalizer replaces with
// U+FFFD, and a literal U+2581 ("▁", SentencePiece's space marker), which decodes as a space.
// Models loaded from elsewhere keep their own normalization and may not round-trip.
#include <sentencepiece_processor.h>  // SentencePieceProcessor, util::Status
#include <sentencepiece_trainer.h>    // SentencePieceTrainer, SentenceIterator

#include <cstdint>      // uint32_t
#include <filesystem>   // model file checks, the model directory
#include <fstream>      // std::ifstream (training input, read line by line)
#include <memory>       // std::unique_ptr
#include <span>         // std::span
#include <string>
#include <string_view>
#include <system_error>  // std::error_code
#include <unordered_map>
#include <vector>

#include <fmt/format.h>  // fmt::format

#include "common/error.h"  // cadtrain::fail, cadtrain::with_context
#include "data/dataset.h"  // Dataset (tokenizer attributes)
#include "data/tokenizer.h"

namespace cadtrain::data {
namespace {

namespace spm = sentencepiece;

// SentencePiece's own messages name neither our file nor the operation: add both.
void check_status(const spm::util::Status& status, std::string_view file, std::string_view what) {
  if (!status.ok()) fail("{}: {}: {}", file, what, status.ToString());
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path) : model_path_(model_path) {
    // SentencePiece names no file for a missing one and throws std::ios_base::failure for a
    // directory: check first.
    if (!std::filesystem::exists(model_path)) fail("{}: SentencePiece model not found", model_path);
    if (!std::filesystem::is_regular_file(model_path)) {
      fail("{}: SentencePiece model is not a regular file", model_path);
    }
    check_status(processor_.Load(model_path), model_path, "cannot load SentencePiece model");
  }

  std::vector<uint32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    check_status(processor_.Encode(text, &ids), model_path_, "SentencePiece encode failed");
    return {ids.begin(), ids.end()};
  }

  std::string decode(std::span<const uint32_t> ids) const override {
    check_token_ids(ids, vocab_size());
    const std::vector<int> signed_ids(ids.begin(), ids.end());
    std::string text;
    check_status(processor_.Decode(signed_ids, &text), model_path_, "SentencePiece decode failed");
    return text;
  }

  uint32_t vocab_size() const override { return static_cast<uint32_t>(processor_.GetPieceSize()); }
  std::string name() const override { return "sentencepiece"; }

 private:
  std::string model_path_;
  spm::SentencePieceProcessor processor_;
};

// Feeds the trainer one line of the input files at a time, so that neither the corpus nor a file
// is held in memory and file names may contain commas (the trainer's `input` flag splits on them).
class LineIterator final : public spm::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& files) : files_(files) { Next(); }

  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  spm::util::Status status() const override { return status_; }

  void Next() override {
    while (!done_) {
      if (stream_.is_open() && std::getline(stream_, line_)) return;
      if (stream_.is_open() && stream_.bad()) {
        return stop(fmt::format("{}: read error", files_[next_file_ - 1]));
      }
      if (next_file_ == files_.size()) return stop({});
      open_next();
    }
  }

 private:
  void open_next() {
    stream_.close();
    stream_.clear();
    const std::string& file = files_[next_file_++];
    stream_.open(file, std::ios::binary);
    if (!stream_) stop(fmt::format("{}: cannot open for reading", file));
  }

  void stop(const std::string& error) {
    done_ = true;
    if (!error.empty()) status_ = spm::util::Status(spm::util::StatusCode::kNotFound, error);
  }

  const std::vector<std::string>& files_;
  size_t next_file_ = 0;
  std::ifstream stream_;
  std::string line_;
  bool done_ = false;
  spm::util::Status status_;
};

std::unordered_map<std::string, std::string> trainer_args(
    const std::string& model_prefix, const SentencePieceTrainOptions& options) {
  return {
      {"model_prefix", model_prefix},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"model_type", options.model_type},
      {"character_coverage", fmt::format("{}", options.character_coverage)},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      {"shuffle_input_sentence", "true"},
      // Exact round trips (see the top of the file).
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"byte_fallback", "true"},
      // A small corpus may not support vocab_size pieces: take fewer rather than fail.
      {"hard_vocab_limit", "false"},
      // Lines are paragraphs, often longer than the 4192-byte default (which skips them).
      {"max_sentence_length", "65536"},
      // Fixed, so that the model does not depend on the machine's core count (the EM sums are
      // split per thread).
      {"num_threads", "4"},
      // INFO and WARNING lines are progress chatter; errors come back as a Status.
      {"minloglevel", "2"},
  };
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

std::string train_sentencepiece(const std::vector<std::string>& input_files,
                                const std::string& model_prefix,
                                const SentencePieceTrainOptions& options) {
  if (input_files.empty()) fail("{}: no input files to train SentencePiece on", model_prefix);
  // Reservoir sampling of the training sentences is random: fix it so that builds reproduce.
  spm::SetRandomGeneratorSeed(20240601);
  LineIterator lines(input_files);
  const std::string model_path = model_prefix + ".model";
  const std::filesystem::path model_dir = std::filesystem::absolute(model_prefix).parent_path();
  std::error_code error;
  std::filesystem::create_directories(model_dir, error);
  if (error) fail("{}: cannot create directory: {}", model_dir.string(), error.message());
  check_status(spm::SentencePieceTrainer::Train(trainer_args(model_prefix, options), &lines),
               model_path, "SentencePiece training failed");
  check_status(lines.status(), model_path, "SentencePiece training failed");
  return model_path;
}

std::unique_ptr<Tokenizer> tokenizer_for(const Dataset& dataset) {
  const std::string& name = dataset.tokenizer();
  if (name == "byte") return make_byte_tokenizer();
  if (name != "sentencepiece") fail("{}: unknown tokenizer '{}'", dataset.path(), name);
  if (dataset.tokenizer_model().empty()) {
    fail("{}: tokenizer is sentencepiece but the dataset names no tokenizer_model", dataset.path());
  }
  return with_context(dataset.path(),
                      [&] { return load_sentencepiece(dataset.tokenizer_model()); });
}

}  // namespace cadtrain::data
