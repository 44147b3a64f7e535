// `cadtrain data prefs`: preference pairs as JSONL in, a preference store (data/prefs_store.h) out.
//
// Input: one JSON object per line, {"prompt": str, "chosen": str, "rejected": str | [str, ...]};
// other fields are ignored, blank lines skipped. Prompt and each response are tokenized
// separately (so the spans are exact) with the tokenizer of a dataset or one named directly.
// Every malformed line is reported as "<file>:<line>: <field>: <problem>"; by default any such
// line fails the import (after all lines were checked), with skip_malformed the others are
// written and the skipped ones listed. None is dropped silently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cadtrain::data {

struct PrefsImportOptions {
  std::string input;             // JSONL file
  std::string output;            // preference store (.h5)
  std::string dataset;           // take the tokenizer (and vocab_size) of this dataset, or:
  std::string tokenizer = "byte";  // "byte" or "sentencepiece"
  std::string sentencepiece_model;  // .model file, with tokenizer = sentencepiece
  bool skip_malformed = false;
};

struct PrefsImportSummary {
  uint64_t examples = 0;
  uint64_t responses = 0;  // chosen + rejected
  uint64_t tokens = 0;
  uint64_t longest = 0;    // longest prompt + response, tokens
  std::vector<std::string> skipped;  // "<file>:<line>: ..." for each skipped line
};

PrefsImportSummary import_prefs(const PrefsImportOptions& options);

}  // namespace cadtrain::data
