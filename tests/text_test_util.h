// A deterministic English-like corpus for the tokenizer and text-import tests (SentencePiece
// needs ordinary text to train on).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/rng.h"  // cadtrain::Rng (the corpus is identical everywhere)
#include "test_util.h"

namespace cadtrain::test {

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
