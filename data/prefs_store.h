// Preference store (DESIGN section 6): per example a prompt, one chosen and one or more rejected
// responses, tokenized, with the span of each part; optionally the reference model's
// log-probability of every response (written by `cadtrain po prepare-ref`).
//
// Format (format_version 1):
//   /tokens            uint32 [n_tokens]        every segment's tokens, concatenated
//   /segment_offsets   uint64 [n_segments + 1]  segment s is tokens[offsets[s], offsets[s+1])
//   /example_segments  uint64 [n_examples + 1]  example e is segments [es[e], es[e+1]):
//                                               prompt, chosen, rejected_1 .. rejected_M (M >= 1)
//   /source_line       uint64 [n_examples]      1-based line of the JSONL file it came from
//   /ref_logps         float64 [n_segments]     optional: sum over the response's tokens of
//                                               log pi_ref(y_t | x, y_<t); NaN for prompts
//   attributes on /: format_version, vocab_size (uint32), tokenizer ("byte" / "sentencepiece"),
//     tokenizer_model (string, absolute path or empty), source (string: the JSONL file),
//     reference (string, only with /ref_logps: the checkpoint they came from)
// Every 1-D dataset is chunked with Fletcher-32 checksums. Preference sets are small next to
// pretraining data, so the reader loads and validates the whole store at open.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cadtrain::data {

inline constexpr uint32_t kPrefsStoreFormatVersion = 1;

// One example's token sequences (views into the store).
struct PrefsExample {
  std::span<const uint32_t> prompt;
  std::span<const uint32_t> chosen;
  std::vector<std::span<const uint32_t>> rejected;  // M >= 1
  uint64_t source_line = 0;
  // Reference log-probability sums of chosen and of each rejected; empty without /ref_logps.
  double ref_chosen = 0;
  std::vector<double> ref_rejected;
};

struct PrefsStoreInfo {
  uint32_t vocab_size = 0;
  std::string tokenizer;
  std::string tokenizer_model;
  std::string source;
  std::string reference;  // non-empty iff the store holds reference log-probabilities
};

// The whole store in memory; built by prefs_import (JSONL) or by a reader plus new ref_logps.
struct PrefsData {
  PrefsStoreInfo info;
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> segment_offsets{0};
  std::vector<uint64_t> example_segments{0};
  std::vector<uint64_t> source_line;
  std::vector<double> ref_logps;  // empty, or one per segment

  uint64_t num_examples() const { return source_line.size(); }
  // Appends one example (prompt and every response non-empty, at least one rejected).
  void add_example(std::span<const uint32_t> prompt, std::span<const uint32_t> chosen,
                   const std::vector<std::vector<uint32_t>>& rejected, uint64_t line);
};

// Writes data to "<path>.tmp", fsyncs and renames it into place (never a half-written store
// under the final name). Validates the structure first and throws naming what is wrong.
void write_prefs_store(const std::string& path, const PrefsData& data);

class PrefsStore {
 public:
  // Loads and validates everything (attributes, dtypes, shapes, offsets, spans, token ids,
  // checksums); throws naming the file and the dataset at fault.
  static PrefsStore open(const std::string& path);

  const std::string& path() const { return path_; }
  const PrefsStoreInfo& info() const { return data_.info; }
  const PrefsData& data() const { return data_; }
  uint64_t num_examples() const { return data_.num_examples(); }
  bool has_reference() const { return !data_.ref_logps.empty(); }
  PrefsExample example(uint64_t e) const;
  // The longest prompt + response of any example, in tokens.
  uint64_t longest_sequence() const;

 private:
  std::string path_;
  PrefsData data_;
};

}  // namespace cadtrain::data
