// The embedded synthetic long-context corpus: document lengths, document text with long-range
// retrieval tasks, and the HDF5 writer.
//
// Document layout (byte-level text, token id = byte):
//   [filler][fact][filler][fact]...[filler] | [filler][query][filler][query]...[filler]
//   \______________ first half ____________/ \______________ second half _____________/
// fact:   "The code word ZQPX is 4821. "   (key: 4-6 uppercase letters, value: 4 digits)
// query:  "Recall: ZQPX is 4821. "         (answer_mask = 1 on "4821" only)
// Fact and query share the link " is " so that the key sits three tokens before the value in
// both: the query's answer is an associative recall a small model can learn (an induction
// circuit keyed on the last letters of the key), not a paraphrase it must decode.
// filler: "the quiet farmer crosses the bridge near the hill. " (lowercase words, ' ' and '.')
// Facts are in the first half and queries, in random order, in the second, so the fact-to-query
// distance grows with the document. Filler holds no uppercase letters or digits, so a query's
// value is predictable only by attending back to its fact.
//
// Randomness: write_synthetic_corpus draws every length from Rng(seed, 0) and document d from its
// own stream Rng(seed, d + 1), so a document depends only on (seed, d, its length).
#include "data/synth_corpus.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <span>
#include <string_view>
#include <unordered_set>

#include "common/error.h"  // fail, CADTRAIN_CHECK
#include "configs/config.h"  // find_synth_problems
#include "common/rng.h"  // Rng
#include "data/dataset.h"         // DatasetWriter
#include "data/length_presets.h"  // sample_length_ratio

namespace cadtrain::data {
namespace {

constexpr std::string_view kFactHead = "The code word ";
constexpr std::string_view kFactLink = " is ";
constexpr std::string_view kQueryHead = "Recall: ";
constexpr std::string_view kQueryLink = " is ";
constexpr std::string_view kItemEnd = ". ";
constexpr uint64_t kMinKeyLen = 4;
constexpr uint64_t kMaxKeyLen = 6;
constexpr uint64_t kValueLen = 4;
constexpr uint64_t kMaxFactLen =
    kFactHead.size() + kMaxKeyLen + kFactLink.size() + kValueLen + kItemEnd.size();
constexpr uint64_t kMaxQueryLen =
    kQueryHead.size() + kMaxKeyLen + kQueryLink.size() + kValueLen + kItemEnd.size();

// Filler vocabulary: a fixed template over small word lists gives text with local structure a
// small model learns quickly, so the loss left over is mostly the long-range answers.
constexpr std::string_view kAdjectives[] = {"old",  "quiet", "small", "green", "bright", "cold",
                                            "slow", "tall",  "warm",  "dark",  "soft",   "busy"};
constexpr std::string_view kNouns[] = {"river",   "town",   "farmer", "garden", "window", "bridge",
                                       "teacher", "forest", "market", "boat",   "hill",   "lamp",
                                       "road",    "child",  "bird",   "letter"};
constexpr std::string_view kVerbs[] = {"sees",    "finds",  "follows", "passes",  "watches",
                                       "carries", "paints", "visits",  "crosses", "opens"};
constexpr std::string_view kPrepositions[] = {"near", "behind", "under", "beside", "across"};

template <size_t N>
std::string_view pick(const std::string_view (&words)[N], Rng& rng) {
  return words[rng.below(N)];
}

// "the ADJ NOUN VERB the NOUN [PREP the NOUN]" as a list of words (at most 9).
struct Sentence {
  std::array<std::string_view, 9> words;
  size_t n = 0;
  void add(std::string_view w) { words[n++] = w; }
};

Sentence make_sentence(Rng& rng) {
  Sentence s;
  s.add("the");
  s.add(pick(kAdjectives, rng));
  s.add(pick(kNouns, rng));
  s.add(pick(kVerbs, rng));
  s.add("the");
  s.add(pick(kNouns, rng));
  if (rng.below(2) == 0) {
    s.add(pick(kPrepositions, rng));
    s.add("the");
    s.add(pick(kNouns, rng));
  }
  return s;
}

struct Fact {
  std::array<char, kMaxKeyLen> key{};
  uint64_t key_len = 0;
  std::array<char, kValueLen> value{};
  uint64_t fact_value_pos = 0;   // token index of the value in the fact
  uint64_t query_value_pos = 0;  // token index of the value in the query

  std::string_view key_view() const { return {key.data(), key_len}; }
  std::string_view value_view() const { return {value.data(), value.size()}; }
  uint64_t fact_len() const {
    return kFactHead.size() + key_len + kFactLink.size() + kValueLen + kItemEnd.size();
  }
  uint64_t query_len() const {
    return kQueryHead.size() + key_len + kQueryLink.size() + kValueLen + kItemEnd.size();
  }
};

// Writes one document left to right into buffers sized once up front (no per-token allocation).
class DocWriter {
 public:
  DocWriter(SynthDocument& doc, uint64_t length) : doc_(doc) {
    doc.tokens.resize(length);
    doc.answer_mask.assign(length, 0);
  }
  uint64_t pos() const { return pos_; }
  uint64_t size() const { return doc_.tokens.size(); }

  void put(std::string_view text, bool answer = false) {
    CADTRAIN_CHECK(pos_ + text.size() <= size(), "synthetic document overflows its length {}",
                   size());
    for (char c : text) {
      doc_.tokens[pos_] = static_cast<unsigned char>(c);
      doc_.answer_mask[pos_] = answer ? 1 : 0;
      ++pos_;
    }
  }

  // Exactly n bytes of filler: whole words while they fit, then spaces, so no word is cut.
  void put_filler(uint64_t n, Rng& rng) {
    const uint64_t end = pos_ + n;
    while (pos_ < end) {
      const Sentence s = make_sentence(rng);
      for (size_t i = 0; i < s.n; ++i) {
        const std::string_view sep = i + 1 == s.n ? kItemEnd : " ";
        if (s.words[i].size() + sep.size() > end - pos_) {
          while (pos_ < end) put(" ");
          return;
        }
        put(s.words[i]);
        put(sep);
      }
    }
  }

  void put_fact(Fact& f) {
    put(kFactHead);
    put(f.key_view());
    put(kFactLink);
    f.fact_value_pos = pos_;
    put(f.value_view());
    put(kItemEnd);
  }

  void put_query(Fact& f) {
    put(kQueryHead);
    put(f.key_view());
    put(kQueryLink);
    f.query_value_pos = pos_;
    put(f.value_view(), /*answer=*/true);
    put(kItemEnd);
  }

 private:
  SynthDocument& doc_;
  uint64_t pos_ = 0;
};

// The config loader validates run configs; this guards callers that build a SynthConfig in code.
void validate(const config::SynthConfig& cfg) {
  const auto problems = config::find_synth_problems(cfg, "synth");
  if (problems.empty()) return;
  std::string message = "invalid synthetic corpus config:";
  for (const auto& p : problems) message += "\n  " + p.message;
  throw Error(message);
}

uint64_t sample_length(const config::SynthConfig& cfg, Rng& rng) {
  const double tokens = sample_length_ratio(cfg, rng) * static_cast<double>(cfg.mean_doc_tokens());
  // Clip in double first: a far lognormal tail can exceed what uint64 holds.
  const double clipped = std::clamp(std::round(tokens), static_cast<double>(cfg.min_doc_tokens()),
                                    static_cast<double>(cfg.max_doc_tokens()));
  return static_cast<uint64_t>(clipped);
}

// facts_per_1k_tokens rounded, at least one, at most what fits (facts in the first half, queries
// in the second); zero when not even one fact and its query fit.
uint64_t fact_count(double per_1k, uint64_t length) {
  const uint64_t half = length / 2;
  const uint64_t capacity = std::min(half / kMaxFactLen, (length - half) / kMaxQueryLen);
  if (capacity == 0) return 0;
  const double wanted = std::round(static_cast<double>(length) * per_1k / 1000.0);
  return std::clamp<uint64_t>(static_cast<uint64_t>(wanted), 1, capacity);
}

// Random keys (distinct within the document) and values.
std::vector<Fact> make_facts(uint64_t n, Rng& rng) {
  std::vector<Fact> facts(n);
  std::unordered_set<std::string_view> seen(2 * n);
  for (Fact& f : facts) {
    do {
      f.key_len = kMinKeyLen + rng.below(kMaxKeyLen - kMinKeyLen + 1);
      for (uint64_t i = 0; i < f.key_len; ++i) f.key[i] = static_cast<char>('A' + rng.below(26));
    } while (!seen.insert(f.key_view()).second);  // views stay valid: facts never reallocates
    for (char& c : f.value) c = static_cast<char>('0' + rng.below(10));
  }
  return facts;
}

// Splits `free_bytes` into n + 1 gaps at sorted uniform cut points, so the n items land at random
// places across their region.
std::vector<uint64_t> random_gaps(uint64_t free_bytes, uint64_t n, Rng& rng) {
  std::vector<uint64_t> gaps;
  gaps.reserve(n + 1);
  for (uint64_t i = 0; i < n; ++i) gaps.push_back(rng.below(free_bytes + 1));
  std::sort(gaps.begin(), gaps.end());
  gaps.push_back(free_bytes);
  // Cut points to differences, back to front; gaps[0] is already the first cut.
  for (size_t i = gaps.size() - 1; i > 0; --i) gaps[i] -= gaps[i - 1];
  return gaps;
}

// Fills [w.pos(), region_end) with the given facts (as facts or as queries) spread through filler.
void write_region(DocWriter& w, uint64_t region_end, std::span<Fact* const> items, bool queries,
                  Rng& rng) {
  uint64_t used = 0;
  for (const Fact* f : items) used += queries ? f->query_len() : f->fact_len();
  CADTRAIN_CHECK(w.pos() + used <= region_end, "synthetic document region too small");
  const std::vector<uint64_t> gaps = random_gaps(region_end - w.pos() - used, items.size(), rng);
  for (size_t i = 0; i < items.size(); ++i) {
    w.put_filler(gaps[i], rng);
    if (queries) {
      w.put_query(*items[i]);
    } else {
      w.put_fact(*items[i]);
    }
  }
  w.put_filler(gaps.back(), rng);
}

// Generates into doc, reusing its buffers; returns the number of facts.
uint64_t generate_into(const config::SynthConfig& cfg, uint64_t length, Rng& rng,
                       SynthDocument& doc) {
  std::vector<Fact> facts = make_facts(fact_count(cfg.facts_per_1k_tokens(), length), rng);
  std::vector<Fact*> order(facts.size());
  for (size_t i = 0; i < facts.size(); ++i) order[i] = &facts[i];

  DocWriter w(doc, length);
  write_region(w, length / 2, order, /*queries=*/false, rng);
  // Queries in random order (Fisher-Yates), so neither position nor order gives the answer away.
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  write_region(w, length, order, /*queries=*/true, rng);

  double distance = 0.0;
  for (const Fact& f : facts) distance += static_cast<double>(f.query_value_pos - f.fact_value_pos);
  doc.difficulty = facts.empty() ? 0.0f : static_cast<float>(distance / facts.size() / 1000.0);
  return facts.size();
}

}  // namespace

std::vector<uint64_t> sample_doc_lengths(const config::SynthConfig& cfg, Rng& rng) {
  validate(cfg);
  std::vector<uint64_t> lengths(cfg.n_docs());
  for (uint64_t& length : lengths) length = sample_length(cfg, rng);
  return lengths;
}

SynthDocument generate_document(const config::SynthConfig& cfg, uint64_t length, Rng& rng) {
  validate(cfg);
  SynthDocument doc;
  generate_into(cfg, length, rng, doc);
  return doc;
}

SynthSummary write_synthetic_corpus(const config::SynthConfig& cfg, const std::string& path) {
  validate(cfg);
  DatasetWriterOptions options;
  options.vocab_size = 256;
  options.tokenizer = "byte";
  options.with_difficulty = true;
  options.with_answer_mask = true;
  DatasetWriter writer(path, options);

  // Lengths are drawn one at a time (same sequence as sample_doc_lengths with Rng(seed, 0)), so
  // a billion-document corpus needs no length array.
  Rng length_rng(cfg.seed(), 0);
  SynthDocument doc;
  SynthSummary summary;
  for (uint64_t d = 0; d < cfg.n_docs(); ++d) {
    const uint64_t length = sample_length(cfg, length_rng);
    Rng doc_rng(cfg.seed(), d + 1);
    summary.n_answer_tokens += generate_into(cfg, length, doc_rng, doc) * kValueLen;
    writer.add_document(doc.tokens, doc.difficulty, doc.answer_mask);
    summary.n_tokens += length;
  }
  writer.finish();
  summary.n_docs = cfg.n_docs();
  return summary;
}

}  // namespace cadtrain::data
