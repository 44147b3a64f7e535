// `cadtrain data build | synth | inspect | score | prefs`: make, look at and score HDF5 datasets.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/config_options.h"
#include "common/error.h"
#include "data/dataset.h"
#include "data/dataset_stats.h"
#include "data/default_corpus.h"
#include "data/prefs_import.h"
#include "data/text_import.h"
#include "data/tokenizer.h"
#include "trainer/difficulty_score.h"
#include "trainer/session.h"

namespace cadtrain::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double mib(uint64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// Decoded text made safe for a terminal: control bytes other than newline and tab as \xNN.
std::string printable(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n' || c == '\t' || (u >= 0x20 && u != 0x7f)) {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  return out;
}

void print_summary_row(const char* name, const data::Summary& s, int precision) {
  fmt::print("{:<15}min {:.{}f} | p50 {:.{}f} | mean {:.{}f} | p90 {:.{}f} | p99 {:.{}f} | max {:.{}f}\n", name,
             s.min, precision, s.p50, precision, s.mean, precision, s.p90, precision, s.p99, precision, s.max,
             precision);
}

void print_histogram(const data::Log2Histogram& h, uint64_t n_docs) {
  fmt::print("length histogram (documents per power-of-two bucket)\n");
  const uint64_t peak = std::max<uint64_t>(1, *std::max_element(h.buckets.begin(), h.buckets.end()));
  if (h.zeros) fmt::print("  {:>21} {:>9}\n", "empty", h.zeros);
  for (size_t b = 0; b < h.buckets.size(); ++b) {
    if (h.buckets[b] == 0) continue;
    const std::string bar(static_cast<size_t>(40.0 * static_cast<double>(h.buckets[b]) / static_cast<double>(peak)), '#');
    fmt::print("  [{:>8}, {:>9}) {:>9} {:5.1f}% {}\n", uint64_t{1} << b, uint64_t{1} << (b + 1), h.buckets[b],
               100.0 * static_cast<double>(h.buckets[b]) / static_cast<double>(n_docs), bar);
  }
}

// Ten equal-width bins from the smallest difficulty to the largest: the shape a curriculum's
// pacing walks through (data.curriculum admits documents from the left).
void print_difficulty_histogram(std::span<const float> difficulty) {
  constexpr size_t kBins = 10;
  const auto [lo_it, hi_it] = std::minmax_element(difficulty.begin(), difficulty.end());
  const double lo = *lo_it;
  const double width = (static_cast<double>(*hi_it) - lo) / kBins;
  std::vector<uint64_t> bins(kBins, 0);
  for (const float d : difficulty) {
    const double at = width > 0 ? (d - lo) / width : 0.0;
    ++bins[std::min(kBins - 1, static_cast<size_t>(at))];
  }
  fmt::print("difficulty histogram (documents per equal-width bin, easiest first)\n");
  const uint64_t peak = std::max<uint64_t>(1, *std::max_element(bins.begin(), bins.end()));
  uint64_t below = 0;
  for (size_t b = 0; b < kBins; ++b) {
    below += bins[b];
    const std::string bar(static_cast<size_t>(40.0 * static_cast<double>(bins[b]) / static_cast<double>(peak)), '#');
    fmt::print("  [{:>9.3f}, {:>9.3f}{} {:>9} {:5.1f}% (cumulative {:5.1f}%) {}\n", lo + width * static_cast<double>(b),
               lo + width * static_cast<double>(b + 1), b + 1 == kBins ? "]" : ")", bins[b],
               100.0 * static_cast<double>(bins[b]) / static_cast<double>(difficulty.size()),
               100.0 * static_cast<double>(below) / static_cast<double>(difficulty.size()), bar);
  }
}

// Reads every token and answer-mask byte in chunks (validating ids and checksums on the way).
void verify_all(const data::Dataset& ds) {
  constexpr uint64_t kChunk = 1 << 20;
  std::vector<uint32_t> tokens(kChunk);
  std::vector<uint8_t> mask(ds.has_answer_mask() ? kChunk : 0);
  uint64_t answers = 0;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t begin = 0; begin < ds.num_tokens(); begin += kChunk) {
    const uint64_t end = std::min(ds.num_tokens(), begin + kChunk);
    ds.read_tokens(begin, end, tokens.data());
    if (ds.has_answer_mask()) {
      ds.read_answer_mask(begin, end, mask.data());
      answers += static_cast<uint64_t>(std::count_if(mask.begin(), mask.begin() + static_cast<long>(end - begin),
                                                     [](uint8_t m) { return m != 0; }));
    }
  }
  const double secs = seconds_since(start);
  const uint64_t bytes = ds.num_tokens() * (4 + (ds.has_answer_mask() ? 1 : 0));
  fmt::print("verified       every token < vocab_size, every checksum good: {:.1f} MiB in {:.3f} s ({:.0f} MiB/s)\n",
             mib(bytes), secs, mib(bytes) / std::max(secs, 1e-9));
  if (ds.has_answer_mask()) {
    fmt::print("answer tokens  {} ({:.2f}% of tokens)\n", answers,
               100.0 * static_cast<double>(answers) / static_cast<double>(std::max<uint64_t>(1, ds.num_tokens())));
  }
}

void inspect(const std::string& path, uint64_t doc, uint64_t n_tokens, bool verify) {
  const data::Dataset ds = data::Dataset::open(path);
  fmt::print("dataset        {}\n", path);
  fmt::print("format         version {}, tokenizer {} (vocab {}){}\n", ds.format_version(), ds.tokenizer(),
             ds.vocab_size(), ds.tokenizer_model().empty() ? "" : ", model " + ds.tokenizer_model());
  fmt::print("documents      {}\n", ds.num_docs());
  fmt::print("tokens         {} ({:.1f} MiB of uint32)\n", ds.num_tokens(), mib(4 * ds.num_tokens()));
  const auto lengths = data::doc_lengths(ds);
  print_summary_row("doc length", data::summarize({lengths.begin(), lengths.end()}), 0);
  if (ds.difficulty().empty()) {
    fmt::print("difficulty     none\n");
  } else {
    print_summary_row("difficulty", data::summarize({ds.difficulty().begin(), ds.difficulty().end()}), 3);
  }
  if (ds.num_docs() > 0) print_histogram(data::log2_histogram(lengths), ds.num_docs());
  if (!ds.difficulty().empty()) print_difficulty_histogram(ds.difficulty());
  if (verify) verify_all(ds);
  if (doc >= ds.num_docs()) {
    if (ds.num_docs() > 0) fail("--doc {} is out of range: {} has {} documents", doc, path, ds.num_docs());
    return;
  }
  const auto tokens = ds.read_doc(doc);
  const size_t shown = std::min<size_t>(tokens.size(), n_tokens);
  const auto tokenizer = data::tokenizer_for(ds);
  fmt::print("document {} ({} tokens), first {} decoded:\n{}\n", doc, tokens.size(), shown,
             printable(tokenizer->decode(std::span(tokens).first(shown))));
}

void add_build(CLI::App& data_cmd) {
  CLI::App* build = data_cmd.add_subcommand("build", "Tokenize text files into an HDF5 dataset");
  auto opt = std::make_shared<data::TextImportOptions>();
  build->add_option("inputs", opt->inputs, "Text files and/or directories (read recursively)")->required();
  build->add_option("-o,--out", opt->output, "Output dataset (.h5)")->required();
  build->add_option("--separator", opt->separator,
                    "Split files into documents at this exact string (default: one document per file)");
  build->add_option("--tokenizer", opt->tokenizer, "byte or sentencepiece")
      ->check(CLI::IsMember({"byte", "sentencepiece"}));
  build->add_option("--sp-model", opt->sentencepiece_model,
                    "Use this SentencePiece model instead of training one on the inputs");
  build->add_option("--sp-vocab-size", opt->sentencepiece.vocab_size, "Vocabulary of a trained SentencePiece model");
  build->add_option("--sp-model-type", opt->sentencepiece.model_type, "unigram or bpe")
      ->check(CLI::IsMember({"unigram", "bpe"}));
  build->callback([opt] {
    const auto start = std::chrono::steady_clock::now();
    const data::TextImportSummary s = data::import_text(*opt);
    const double secs = seconds_since(start);
    fmt::print("wrote {}: {} documents, {} tokens from {} files ({:.1f} MiB of text) in {:.2f} s: {:.1f} MiB/s\n",
               opt->output, s.n_docs, s.n_tokens, s.n_files, mib(s.n_bytes), secs,
               mib(s.n_bytes) / std::max(secs, 1e-9));
    if (!s.tokenizer_model.empty()) fmt::print("tokenizer model: {}\n", s.tokenizer_model);
  });
}

void add_synth(CLI::App& data_cmd) {
  CLI::App* synth = data_cmd.add_subcommand(
      "synth", "Generate the synthetic long-context corpus a config's data section describes");
  auto options = std::make_shared<ConfigOptions>();
  auto force = std::make_shared<bool>(false);
  options->add_to(synth);
  synth->add_flag("-f,--force", *force, "Regenerate files that already exist");
  synth->callback([options, force] {
    const config::RunConfig cfg = options->load();
    const auto written = data::ensure_synthetic_datasets(cfg.data(), *force);
    for (const auto& g : written) {
      const uint64_t bytes = g.summary.n_tokens * 5;  // uint32 token + uint8 answer mask
      fmt::print("wrote {}: {} documents, {} tokens ({} answer tokens) in {:.2f} s: {:.1f} MiB/s\n", g.path,
                 g.summary.n_docs, g.summary.n_tokens, g.summary.n_answer_tokens, g.seconds, mib(bytes),
                 mib(bytes) / std::max(g.seconds, 1e-9));
    }
    if (written.empty()) {
      fmt::print("{} and {} exist; nothing to do (--force regenerates)\n", cfg.data().train_path(),
                 cfg.data().eval_path());
    }
  });
}

void add_inspect(CLI::App& data_cmd) {
  CLI::App* cmd = data_cmd.add_subcommand("inspect", "Summarize a dataset and decode a document");
  struct Options {
    std::string path;
    uint64_t doc = 0;
    uint64_t tokens = 200;
    bool verify = false;
  };
  auto opt = std::make_shared<Options>();
  cmd->add_option("dataset", opt->path, "Dataset (.h5)")->required();
  cmd->add_option("--doc", opt->doc, "Document to decode");
  cmd->add_option("--tokens", opt->tokens, "How many of its tokens to decode");
  cmd->add_flag("--verify", opt->verify, "Read every token and checksum, and count answer tokens");
  cmd->callback([opt] { inspect(opt->path, opt->doc, opt->tokens, opt->verify); });
}

struct ScoreOptions {
  std::string path;
  std::vector<std::string> checkpoints;
  std::string metric = "loss";
  std::string out;  // default: the dataset itself
};

void score(const ScoreOptions& o) {
  if (o.metric == "loss" && o.checkpoints.size() != 1) {
    fail("--metric loss scores with one reference checkpoint, got {} (--metric answers takes several)",
         o.checkpoints.size());
  }
  const data::Dataset ds = data::Dataset::open(o.path);
  if (o.metric == "answers" && !ds.has_answer_mask()) {
    fail("{} has no /answer_mask: --metric answers needs marked answer tokens; use --metric loss", o.path);
  }
  std::vector<trainer::DocumentScores> per_model;
  for (const std::string& checkpoint : o.checkpoints) {
    const auto start = std::chrono::steady_clock::now();
    trainer::LoadedModel m = trainer::load_model(checkpoint, 0);
    if (ds.vocab_size() > m.cfg.model().vocab_size()) {
      fail("{} has vocab_size {} > the vocab_size {} of {}", o.path, ds.vocab_size(), m.cfg.model().vocab_size(),
           m.path);
    }
    per_model.push_back(trainer::score_documents(*m.session.model, ds, m.cfg.data().tokens_per_micro_batch()));
    fmt::print("scored {} documents with {} (step {}) in {:.1f} s\n", ds.num_docs(), m.path, m.step,
               seconds_since(start));
  }
  const std::vector<float> difficulty = o.metric == "loss" ? trainer::mean_loss_difficulty(per_model.front())
                                                           : trainer::answer_difficulty(per_model);
  const std::string out = o.out.empty() ? o.path : o.out;
  data::write_difficulty(o.path, out, difficulty);
  print_summary_row("difficulty", data::summarize({difficulty.begin(), difficulty.end()}), 3);
  fmt::print("wrote /difficulty ({}) of {} documents to {}\n",
             o.metric == "loss" ? "mean next-token loss" : "1 - share of the models that get every answer right",
             difficulty.size(), out);
}

void add_score(CLI::App& data_cmd) {
  CLI::App* cmd = data_cmd.add_subcommand(
      "score", "Write per-document difficulty (/difficulty, for data.curriculum) from reference checkpoints");
  auto opt = std::make_shared<ScoreOptions>();
  cmd->add_option("dataset", opt->path, "Dataset (.h5) to score")->required();
  cmd->add_option("-c,--checkpoint", opt->checkpoints, "Reference run directory or checkpoint (repeatable)")
      ->required();
  cmd->add_option("--metric", opt->metric,
                  "loss: one model's mean next-token loss per document; answers: 1 - the share of the models "
                  "that predict every answer token of the document")
      ->check(CLI::IsMember({"loss", "answers"}));
  cmd->add_option("-o,--out", opt->out, "Write a copy with the scores here (default: replace the dataset's own "
                                        "/difficulty, atomically)");
  cmd->callback([opt] { score(*opt); });
}

void add_prefs(CLI::App& data_cmd) {
  CLI::App* cmd = data_cmd.add_subcommand(
      "prefs", "Tokenize JSONL preference pairs ({prompt, chosen, rejected}) into a preference store");
  auto opt = std::make_shared<data::PrefsImportOptions>();
  cmd->add_option("--jsonl", opt->input, "Input: one JSON object per line")->required();
  cmd->add_option("-o,--out", opt->output, "Preference store to write (.h5, written atomically)")->required();
  auto* ds = cmd->add_option("--dataset", opt->dataset, "Use this dataset's tokenizer and vocab_size");
  cmd->add_option("--tokenizer", opt->tokenizer, "byte or sentencepiece (without --dataset)")
      ->check(CLI::IsMember({"byte", "sentencepiece"}))
      ->excludes(ds);
  cmd->add_option("--sp-model", opt->sentencepiece_model, "SentencePiece model, with --tokenizer sentencepiece")
      ->excludes(ds);
  cmd->add_flag("--skip-malformed", opt->skip_malformed,
                "Write the well-formed lines and list the malformed ones (default: fail on any)");
  cmd->callback([opt] {
    const auto start = std::chrono::steady_clock::now();
    const data::PrefsImportSummary s = data::import_prefs(*opt);
    for (const auto& line : s.skipped) fmt::print("skipped {}\n", line);
    fmt::print("wrote {}: {} examples, {} responses, {} tokens (longest prompt + response {}) in {:.2f} s{}\n",
               opt->output, s.examples, s.responses, s.tokens, s.longest, seconds_since(start),
               s.skipped.empty() ? std::string() : fmt::format("; {} malformed lines skipped", s.skipped.size()));
  });
}

}  // namespace

void register_data_commands(CLI::App& app) {
  CLI::App* data_cmd = app.add_subcommand("data", "Build, generate and inspect HDF5 datasets");
  data_cmd->require_subcommand(1);
  add_build(*data_cmd);
  add_synth(*data_cmd);
  add_inspect(*data_cmd);
  add_score(*data_cmd);
  add_prefs(*data_cmd);
}

}  // namespace cadtrain::cli
