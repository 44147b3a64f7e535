// Step lines and metrics.jsonl (see run_log.h).
#include "trainer/run_log.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

#include "common/error.h"

namespace cadtrain::trainer {

RunLog::RunLog(const std::string& metrics_path, bool append, uint32_t print_every)
    : metrics_(metrics_path, append ? std::ios::app : std::ios::trunc), path_(metrics_path), print_every_(print_every) {
  if (!metrics_) fail("cannot open metrics file {}", metrics_path);
}

void RunLog::table(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 9;
  for (const auto& [k, v] : rows) width = std::max(width, k.size());
  fmt::print("| {:<{}} | value\n|{:-<{}}|------\n", "parameter", width, "", width + 2);
  for (const auto& [k, v] : rows) fmt::print("| {:<{}} | {}\n", k, width, v);
  std::fflush(stdout);
}

void RunLog::step(const StepMetrics& m) {
  const double fill = m.capacity > 0 ? static_cast<double>(m.tokens) / static_cast<double>(m.capacity) : 0;
  nlohmann::json j = {{"step", m.step},
                      {"loss", m.loss},
                      {"grad_norm", m.grad_norm},
                      {"lr", m.lr},
                      {"ms", m.seconds * 1e3},
                      {"tokens", m.tokens},
                      {"fill", fill},
                      {"unused_tokens", m.capacity - m.tokens},  // capacity not used (and not computed)
                      {"cut_tokens", m.cut_tokens},
                      {"tokens_per_s", m.tokens_per_second},
                      {"mfu", m.mfu},
                      {"mfu_vs_sgemm_now", m.mfu_vs_sgemm_now},
                      {"skipped", m.skipped},
                      {"time_ms",
                       {{"data", m.data * 1e3},
                        {"forward", m.forward * 1e3},
                        {"backward", m.backward * 1e3},
                        {"core_attention", m.core_attention * 1e3},
                        {"loss", m.loss_time * 1e3},
                        {"optimizer", m.optimizer * 1e3}}}};
  std::string extra;
  for (const auto& [name, value] : m.extra) {
    j[name] = value;
    extra += fmt::format(" | {} {:.4f}", name, value);
  }
  metrics_ << j.dump() << '\n';
  metrics_.flush();
  if (!metrics_) fail("cannot write metrics file {}", path_);
  if (m.step % print_every_ != 0 && m.step != m.total_steps && !m.skipped) return;
  fmt::print(
      "step {:>{}}/{} | loss {:.4f}{} | norm {:.3f} | lr {:.2e} | {:.0f} ms | {:.0f} tok/s | fill {:.1f}%{} | "
      "{:.1f}% MFU | data {:.0f} fwd {:.0f} bwd {:.0f} (attn {:.0f}, loss {:.0f}) opt {:.0f} ms{}\n",
      m.step, fmt::formatted_size("{}", m.total_steps), m.total_steps, m.loss, extra, m.grad_norm, m.lr, m.seconds * 1e3,
      m.tokens_per_second, 100 * fill, m.cut_tokens > 0 ? fmt::format(" ({} cut)", m.cut_tokens) : "", 100 * m.mfu,
      m.data * 1e3, m.forward * 1e3, m.backward * 1e3, m.core_attention * 1e3,
      m.loss_time * 1e3, m.optimizer * 1e3, m.skipped ? " | SKIPPED (non-finite)" : "");
  std::fflush(stdout);
}

void RunLog::eval(uint64_t step, const std::string& split, const EvalResult& r) {
  nlohmann::json j = {{"step", step},
                      {"eval", split},
                      {"scope", eval_scope(r)},
                      {"loss", r.loss},
                      {"perplexity", r.perplexity},
                      {"tokens", r.tokens},
                      {"micro_batches", r.micro_batches},
                      {"cut_tokens", r.cut_tokens},
                      {"answer_tokens", r.answer_tokens},
                      {"retrieval_accuracy", r.retrieval_accuracy}};
  metrics_ << j.dump() << '\n';
  metrics_.flush();
  // Six significant digits: differences between runs must be visible.
  fmt::print("eval {} @ step {} | loss {:.6g} | ppl {:.6g} | {} tokens ({}){} | retrieval accuracy {:.2f}% ({}/{} answer tokens)\n",
             split, step, r.loss, r.perplexity, r.tokens, eval_scope(r),
             r.cut_tokens > 0 ? fmt::format(", {} after a cut", r.cut_tokens) : "", 100 * r.retrieval_accuracy,
             r.answer_correct, r.answer_tokens);
  std::fflush(stdout);
}

void RunLog::note(const std::string& line) {
  fmt::print("{}\n", line);
  std::fflush(stdout);
}

}  // namespace cadtrain::trainer
