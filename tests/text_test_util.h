// Helpers shared by the tokenizer and text-import tests: a per-test temporary directory, small
// file I/O, and a deterministic English-like corpus to train SentencePiece on.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <cstdlib>     // mkdtemp
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include "common/rng.h"  // cadtrain::Rng (the corpus is identical everywhere)

namespace cadtrain::test {

// A fresh directory named after the running test, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info != nullptr ? std::string(info->test_suite_name()) + "." + info->name()
                                       : std::string("suite");
    std::string pattern =
        std::filesystem::temp_directory_path() / ("cadtrain_" + name + "_XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + pattern);
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  const std::filesystem::path& path() const { return path_; }
  std::string operator/(std::string_view name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& path, std::string_view contents) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string contents(std::filesystem::file_size(path), '\0');
  in.read(contents.data(), static_cast<std::streamsize>(contents.size()));
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return contents;
}

// One English-like sentence: capitalised, 4-12 common words, a comma now and then, a full stop.
inline std::string english_sentence(Rng& rng) {
  static constexpr std::array<std::string_view, 48> kWords = {
      "the",   "a",      "of",     "and",    "to",     "in",    "is",     "was",
      "that",  "for",    "it",     "with",   "as",     "on",    "be",     "at",
      "by",    "this",   "had",    "not",    "are",    "but",   "from",   "or",
      "have",  "an",     "they",   "which",  "one",    "you",   "were",   "her",
      "all",   "she",    "there",  "would",  "their",  "we",    "him",    "been",
      "model", "long",   "context", "training", "river", "stone", "morning", "garden"};
  const uint64_t n_words = 4 + rng.below(9);
  std::string sentence;
  for (uint64_t i = 0; i < n_words; ++i) {
    if (i > 0) sentence += (rng.below(8) == 0 ? ", " : " ");
    sentence += kWords[rng.below(kWords.size())];
  }
  sentence[0] = static_cast<char>(sentence[0] - 'a' + 'A');
  return sentence + ".";
}

// Paragraphs of sentences, one paragraph per line: about 45 bytes per sentence.
inline std::string english_text(uint64_t seed, int n_sentences) {
  Rng rng(seed);
  std::string text;
  for (int i = 0; i < n_sentences; ++i) {
    text += english_sentence(rng);
    text += (rng.below(5) == 0 || i + 1 == n_sentences) ? "\n" : " ";
  }
  return text;
}

}  // namespace cadtrain::test
