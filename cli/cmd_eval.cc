// `cadtrain eval` and `cadtrain sample`: what a trained model learned.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.h"
#include "common/error.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "trainer/evaluate.h"
#include "trainer/generator.h"
#include "trainer/session.h"

namespace cadtrain::cli {
namespace {

struct EvalOptions {
  std::string checkpoint;
  std::string data;  // default: the config's eval_path
  uint64_t batches = trainer::kWholeDataset;
  std::vector<std::string> sets;
};

struct SampleOptions {
  std::string checkpoint;
  std::string prompt;
  uint32_t tokens = 200;
  std::string tokenizer_dataset;  // default: the config's train_path
  trainer::SamplingOptions sampling;
};

void run_eval(const EvalOptions& o) {
  if (o.batches == 0) fail("--batches 0 scores nothing; give at least 1");
  trainer::LoadedModel m = trainer::load_model(o.checkpoint, 0, o.sets);
  const std::string path = o.data.empty() ? m.cfg.data().eval_path() : o.data;
  const data::Dataset ds = data::Dataset::open(path);
  const trainer::EvalResult r = trainer::evaluate(*m.session.model, ds, m.cfg.data().tokens_per_micro_batch(), o.batches);
  if (r.tokens == 0) {
    fail("{}: no token to score ({} documents, {} tokens; a token is scored when its document has a next one)",
         path, ds.num_docs(), ds.num_tokens());
  }
  // The same definition and digits as train's final "eval loss" (trainer/evaluate.h).
  fmt::print("{} (step {}) on {}: loss {:.6g} | perplexity {:.6g} | {} tokens ({})", m.path, m.step, path, r.loss,
             r.perplexity, r.tokens, trainer::eval_scope(r));
  if (r.cut_tokens > 0) fmt::print(" | {} tokens after a cut", r.cut_tokens);
  if (r.answer_tokens > 0) {
    fmt::print(" | retrieval accuracy {:.2f}% ({}/{} answer tokens)", 100 * r.retrieval_accuracy, r.answer_correct,
               r.answer_tokens);
  }
  fmt::print("\n");
}

void run_sample(const SampleOptions& o) {
  // Generation runs one token at a time: the training activations need room for one row only.
  trainer::LoadedModel m = trainer::load_model(o.checkpoint, 1);
  const std::string ds_path = o.tokenizer_dataset.empty() ? m.cfg.data().train_path() : o.tokenizer_dataset;
  const auto tokenizer = data::tokenizer_for(data::Dataset::open(ds_path));
  const std::vector<uint32_t> prompt = tokenizer->encode(o.prompt);
  trainer::SamplingOptions sampling = o.sampling;
  sampling.max_tokens = m.cfg.model().max_seq_len();
  const auto out = trainer::generate(*m.session.model, prompt, o.tokens, sampling);
  fmt::print("{}{}\n", o.prompt, tokenizer->decode(out));
}

}  // namespace

void register_eval_commands(CLI::App& app) {
  CLI::App* eval = app.add_subcommand("eval", "Loss, perplexity and retrieval accuracy of a checkpoint");
  auto eo = std::make_shared<EvalOptions>();
  eval->add_option("checkpoint", eo->checkpoint, "Run directory or checkpoint file")->required();
  eval->add_option("--data", eo->data, "Dataset to score (default: the run's eval_path)");
  eval->add_option("--batches", eo->batches, "Score only the first this many micro-batches (default: the whole file)");
  eval->add_option("--set", eo->sets, "Override a config field (e.g. data.tokens_per_micro_batch=8192)");
  eval->callback([eo] { run_eval(*eo); });

  CLI::App* sample = app.add_subcommand("sample", "Generate text from a checkpoint and a prompt (KV cache)");
  auto so = std::make_shared<SampleOptions>();
  sample->add_option("checkpoint", so->checkpoint, "Run directory or checkpoint file")->required();
  sample->add_option("-p,--prompt", so->prompt, "Prompt text")->required();
  sample->add_option("-n,--tokens", so->tokens, "Tokens to generate");
  sample->add_option("--temperature", so->sampling.temperature, "0 = greedy");
  sample->add_option("--top-k", so->sampling.top_k, "Sample among the k most likely tokens (0 = all)");
  sample->add_option("--seed", so->sampling.seed, "Sampling seed");
  sample->add_option("--tokenizer-from", so->tokenizer_dataset, "Dataset whose tokenizer to use (default: train_path)");
  sample->callback([so] { run_sample(*so); });
}

}  // namespace cadtrain::cli
