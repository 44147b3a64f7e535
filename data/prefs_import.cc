// JSONL preference pairs to a preference store (prefs_import.h).
#include "data/prefs_import.h"

#include <nlohmann/json.hpp>

#include <algorithm>   // std::max
#include <filesystem>  // absolute tokenizer model path
#include <fstream>     // the JSONL input
#include <memory>      // the tokenizer

#include "common/error.h"       // fail
#include "data/dataset.h"       // the dataset whose tokenizer is used
#include "data/prefs_store.h"   // PrefsData, write_prefs_store
#include "data/tokenizer.h"     // Tokenizer

namespace cadtrain::data {
namespace {

using json = nlohmann::json;

// Errors found on one line; the first is reported.
struct LineError {
  std::string field, problem;
};

std::vector<uint32_t> encode_field(const Tokenizer& tok, const json& value, const std::string& field) {
  if (!value.is_string()) {
    throw LineError{field, fmt::format("must be a string (got {})", value.type_name())};
  }
  const std::string& text = value.get_ref<const std::string&>();
  if (text.empty()) throw LineError{field, "is empty"};
  std::vector<uint32_t> ids = tok.encode(text);
  if (ids.empty()) throw LineError{field, fmt::format("encodes to no tokens ({} bytes of text)", text.size())};
  return ids;
}

struct ParsedLine {
  std::vector<uint32_t> prompt, chosen;
  std::vector<std::vector<uint32_t>> rejected;
};

ParsedLine parse_line(const Tokenizer& tok, const std::string& line) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::parse_error& e) {
    throw LineError{"(line)", fmt::format("not valid JSON (byte {})", e.byte)};
  }
  if (!j.is_object()) throw LineError{"(line)", fmt::format("must be a JSON object (got {})", j.type_name())};
  for (const char* field : {"prompt", "chosen", "rejected"}) {
    if (!j.contains(field)) throw LineError{field, "missing"};
  }
  ParsedLine p;
  p.prompt = encode_field(tok, j["prompt"], "prompt");
  p.chosen = encode_field(tok, j["chosen"], "chosen");
  const json& rejected = j["rejected"];
  if (rejected.is_string()) {
    p.rejected.push_back(encode_field(tok, rejected, "rejected"));
  } else if (rejected.is_array()) {
    if (rejected.empty()) throw LineError{"rejected", "is an empty list (needs at least one response)"};
    for (size_t i = 0; i < rejected.size(); ++i) {
      p.rejected.push_back(encode_field(tok, rejected[i], fmt::format("rejected[{}]", i)));
    }
  } else {
    throw LineError{"rejected", fmt::format("must be a string or a list of strings (got {})", rejected.type_name())};
  }
  return p;
}

}  // namespace

PrefsImportSummary import_prefs(const PrefsImportOptions& o) {
  PrefsData data;
  std::unique_ptr<Tokenizer> tok;
  if (!o.dataset.empty()) {
    const Dataset ds = Dataset::open(o.dataset);
    tok = tokenizer_for(ds);
    data.info.vocab_size = ds.vocab_size();
    data.info.tokenizer = ds.tokenizer();
    data.info.tokenizer_model = ds.tokenizer_model();
  } else if (o.tokenizer == "byte") {
    tok = make_byte_tokenizer();
    data.info.vocab_size = tok->vocab_size();
    data.info.tokenizer = "byte";
  } else if (o.tokenizer == "sentencepiece") {
    if (o.sentencepiece_model.empty()) fail("--tokenizer sentencepiece needs --sp-model (or use --dataset)");
    tok = load_sentencepiece(o.sentencepiece_model);
    data.info.vocab_size = tok->vocab_size();
    data.info.tokenizer = "sentencepiece";
    data.info.tokenizer_model = std::filesystem::absolute(o.sentencepiece_model).string();
  } else {
    fail("unknown tokenizer \"{}\" (byte or sentencepiece)", o.tokenizer);
  }
  data.info.source = o.input;

  std::ifstream in(o.input, std::ios::binary);
  if (!in) fail("{}: cannot open", o.input);
  PrefsImportSummary s;
  std::vector<std::string> errors;
  std::string line;
  uint64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    try {
      const ParsedLine p = parse_line(*tok, line);
      for (const auto& r : p.rejected) s.longest = std::max<uint64_t>(s.longest, p.prompt.size() + r.size());
      s.longest = std::max<uint64_t>(s.longest, p.prompt.size() + p.chosen.size());
      s.responses += 1 + p.rejected.size();
      data.add_example(p.prompt, p.chosen, p.rejected, line_no);
    } catch (const LineError& e) {
      errors.push_back(fmt::format("{}:{}: {}: {}", o.input, line_no, e.field, e.problem));
    }
  }
  if (in.bad()) fail("{}: read error after line {}", o.input, line_no);
  if (!errors.empty() && !o.skip_malformed) {
    std::string listed;
    for (size_t i = 0; i < errors.size() && i < 20; ++i) listed += "\n  " + errors[i];
    if (errors.size() > 20) listed += fmt::format("\n  ... and {} more", errors.size() - 20);
    fail("{}: {} malformed line{} (nothing written; --skip-malformed writes the others):{}", o.input, errors.size(),
         errors.size() == 1 ? "" : "s", listed);
  }
  if (data.num_examples() == 0) fail("{}: no preference examples ({} lines read)", o.input, line_no);
  s.skipped = std::move(errors);
  s.examples = data.num_examples();
  s.tokens = data.tokens.size();
  write_prefs_store(o.output, data);
  return s;
}

}  // namespace cadtrain::data
