// Training-step throughput of the whole trainer on one CPU: the Llama-style model's forward and
// backward over B random sequences of T tokens, the gradient norm and one AdamW step, timed after
// warm-up. The matmul reference (OpenBLAS sgemm on 2048^3) is measured in the same run, and MFU is
// stated two ways: cadtrain's training_flops (causal pairs) and the PEERS.md convention
// (6 x parameters x tokens + 12 x layers x T^2 x width per sequence), which is also what
// bench/torch_train_bench.py prints, so that bench/run_train_bench.sh can set the two side by side.
//
//   build/bench/train_bench [--preset tiny|gpt2-small] [--batch B] [--seq T] [--steps N]
//                           [--warmup W] [--threads P] [--json out.json]
#include <omp.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/rng.h"
#include "configs/config.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "kernels/sgemm_peak.h"
#include "trainer/model.h"
#include "trainer/model_dims.h"
#include "trainer/optimizer.h"

using namespace cadtrain;

namespace {

struct Options {
  std::string preset = "gpt2-small";
  int64_t batch = 0;   // 0: the preset's
  int64_t seq = 0;     // 0: the preset's
  int64_t ffn = 0;     // 0: the preset's
  int steps = 3;
  int warmup = 2;
  int threads = 0;     // 0: OpenMP's default (OMP_NUM_THREADS or all cores)
  uint64_t seed = 1234;
  int sgemm_n = 2048;
  std::string attention = "tasks";  // core attention kernel: tasks (fused, the default) or reference
  std::string json_path;
};

// The model of a preset. tiny: configs/tiny_cpu.pbtxt, whose model block equals the schema's
// defaults. gpt2-small: GPT-2 124M's shape (12 x 768, 12 heads, vocab 50257, tied head) in the
// Llama-style blocks; the SwiGLU MLP is 3072 wide, as GPT-2's GELU MLP (so it holds three
// 768 x 3072 matrices where GPT-2 has two).
config::ModelConfig preset_model(const Options& opt, int64_t seq) {
  config::RunConfig run;  // defaults = configs/tiny_cpu.pbtxt
  config::ModelConfig m = run.model();
  if (opt.preset == "gpt2-small") {
    m.set_vocab_size(50257);
    m.set_d_model(768);
    m.set_n_layers(12);
    m.set_n_heads(12);
    m.set_n_kv_heads(12);
    m.set_ffn_hidden(3072);
    m.set_tie_embeddings(true);
    m.set_max_seq_len(1024);
  } else if (opt.preset != "tiny") {
    fail("--preset {}: expected tiny or gpt2-small", opt.preset);
  }
  if (opt.ffn > 0) m.set_ffn_hidden(static_cast<uint32_t>(opt.ffn));
  m.set_max_seq_len(std::max<uint32_t>(m.max_seq_len(), static_cast<uint32_t>(seq)));
  *run.mutable_model() = m;
  config::validate(run);
  return m;
}

// B sequences of T random tokens (fixed seed), positions restarting at 0 in each, every token
// weighted 1 in the loss.
struct RandomBatch {
  std::vector<uint32_t> tokens, targets;
  std::vector<float> mask;
  std::vector<int32_t> positions, cu_seqlens;

  RandomBatch(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
    const auto n = static_cast<size_t>(b * t);
    Rng rng(seed, 7);
    tokens.resize(n);
    targets.resize(n);
    for (auto& x : tokens) x = static_cast<uint32_t>(rng.below(static_cast<uint64_t>(vocab)));
    for (auto& x : targets) x = static_cast<uint32_t>(rng.below(static_cast<uint64_t>(vocab)));
    mask.assign(n, 1.0f);
    positions.resize(n);
    for (size_t i = 0; i < n; ++i) positions[i] = static_cast<int32_t>(static_cast<int64_t>(i) % t);
    for (int64_t s = 0; s <= b; ++s) cu_seqlens.push_back(static_cast<int32_t>(s * t));
  }

  trainer::Batch view() const {
    trainer::Batch v;
    v.n = static_cast<int64_t>(tokens.size());
    v.tokens = tokens.data();
    v.targets = targets.data();
    v.loss_mask = mask.data();
    v.positions = positions.data();
    v.cu_seqlens = cu_seqlens.data();
    v.n_seqs = static_cast<int64_t>(cu_seqlens.size()) - 1;
    return v;
  }
};

// Seconds per phase, summed over the timed steps.
struct Phases {
  double step = 0, forward = 0, backward = 0, core_attention = 0, loss = 0, optimizer = 0;
};

rusage usage() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru;
}

double peak_rss_gib() { return static_cast<double>(usage().ru_maxrss) / (1024.0 * 1024.0); }  // KiB on Linux

int run(const Options& opt) {
  CADTRAIN_CHECK(opt.steps > 0 && opt.warmup >= 0, "--steps {} must be > 0 and --warmup {} >= 0", opt.steps,
                 opt.warmup);
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  const bool gpt2 = opt.preset == "gpt2-small";
  const int64_t T = opt.seq > 0 ? opt.seq : 1024;
  const int64_t B = opt.batch > 0 ? opt.batch : 4;
  const config::ModelConfig mcfg = preset_model(opt, T);
  const int64_t N = B * T;

  auto backend = kernels::make_cpu_backend();
  auto attention = opt.attention == "reference" ? kernels::make_local_reference_attention()
                                                : kernels::make_local_task_attention();
  trainer::Model model(mcfg, N, *backend, *attention);
  model.init_weights(opt.seed);
  config::OptimizerConfig ocfg;  // AdamW b1 0.9, b2 0.95, eps 1e-8, wd 0.1 (not on norms), clip 1.0
  const double lr = gpt2 ? 6e-4 : 3e-3;
  ocfg.set_lr(lr);
  trainer::AdamW adamw(ocfg, model.params(), *backend);
  const trainer::ModelDims& d = model.dims();

  const RandomBatch data(B, T, d.vocab, opt.seed);
  const trainer::Batch batch = data.view();
  const auto tokens = static_cast<uint64_t>(N);
  const uint64_t pairs = trainer::causal_pairs(data.cu_seqlens);
  const double flops_causal = trainer::training_flops(d, tokens, pairs);
  const double flops_peers = 6.0 * static_cast<double>(d.param_count()) * static_cast<double>(tokens) +
                             12.0 * static_cast<double>(d.n_layers) * static_cast<double>(T * T) *
                                 static_cast<double>(d.c) * static_cast<double>(B);

  fmt::print("| parameter | value |\n|---|---|\n");
  fmt::print("| implementation | cadtrain (hand-written forward/backward, C++) |\n");
  fmt::print("| backend | {} |\n| core attention | {} |\n", backend->name(),
             opt.attention == "reference" ? "local reference (sgemm per sequence and head)"
                                          : "local fused tasks (kernels/cpu/attention_tasks.cc)");
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  fmt::print("| OMP_WAIT_POLICY | {} |\n", wait_policy != nullptr ? wait_policy : "(unset: libgomp spins, then sleeps)");
  fmt::print("| preset | {} |\n", opt.preset);
  fmt::print("| model | {} layers, d_model {}, {} heads ({} kv) of {}, SwiGLU ffn {}, vocab {}, {} head |\n",
             d.n_layers, d.c, d.q_heads, d.kv_heads, d.head_dim, d.ffn, d.vocab, d.tied ? "tied" : "untied");
  fmt::print("| parameters | {} ({:.1f} M; {:.1f} M in matmuls) |\n", d.param_count(), d.param_count() / 1e6,
             d.matmul_params() / 1e6);
  fmt::print("| micro-batch | {} sequences x {} tokens = {} tokens (random, seed {}) |\n", B, T, N, opt.seed);
  fmt::print("| step | zero grads + forward_backward + grad_norm + AdamW (lr {}, clip {}) |\n", lr,
             ocfg.grad_clip());
  fmt::print("| steps | {} warm-up, {} timed (mean) |\n", opt.warmup, opt.steps);
  fmt::print("| FLOPs / step | {:.1f} G (causal, training_flops); {:.1f} G (PEERS.md: 6 P N + 12 L T^2 C B) |\n\n",
             flops_causal / 1e9, flops_peers / 1e9);
  std::fflush(stdout);

  // The matmul reference is measured before and after the steps and the higher figure kept: on a
  // shared machine either one may be caught by other load, which would inflate MFU.
  const double sgemm_before = kernels::measure_sgemm_gflops(opt.sgemm_n, 3);

  Phases sum;
  long faults_timed = 0;  // minor page faults during the timed steps: 0 when no op allocates per call
  double first_loss = 0, last_loss = 0;
  const float grad_scale = static_cast<float>(1.0 / static_cast<double>(N));
  for (int it = 0; it < opt.warmup + opt.steps; ++it) {
    model.reset_times();
    const long faults0 = usage().ru_minflt;
    const double t0 = now_seconds();
    backend->zero(model.params().grads(), model.params().total());
    const double t1 = now_seconds();
    const trainer::LossSum ls = model.forward_backward(batch, grad_scale);
    const double t2 = now_seconds();
    const double norm = adamw.grad_norm();
    CADTRAIN_CHECK(std::isfinite(ls.loss_sum) && std::isfinite(norm), "step {}: loss {} or grad norm {} not finite",
                   it, ls.loss_sum, norm);
    adamw.step(lr, norm);
    const double t3 = now_seconds();
    const long faults = usage().ru_minflt - faults0;
    const double loss = ls.loss_sum / ls.weight_sum;
    if (it == 0) first_loss = loss;
    last_loss = loss;
    const bool timed = it >= opt.warmup;
    fmt::print("{} {}/{} | loss {:.4f} | norm {:.3f} | {:.0f} ms | {:.0f} tok/s\n", timed ? "step" : "warm-up",
               timed ? it - opt.warmup + 1 : it + 1, timed ? opt.steps : opt.warmup, loss, norm, (t3 - t0) * 1e3,
               static_cast<double>(N) / (t3 - t0));
    std::fflush(stdout);
    if (!timed) continue;
    faults_timed += faults;
    const trainer::PhaseTimes& pt = model.times();
    sum.step += t3 - t0;
    sum.forward += pt.forward;
    sum.backward += pt.backward;
    sum.core_attention += pt.core_attention;
    sum.loss += pt.loss;
    sum.optimizer += (t1 - t0) + (t3 - t2);
  }

  const double sgemm_after = kernels::measure_sgemm_gflops(opt.sgemm_n, 3);
  const double sgemm = std::max(sgemm_before, sgemm_after);
  fmt::print("\nsgemm {}^3: {:.1f} GFLOP/s before the steps, {:.1f} after; MFU uses {:.1f}\n", opt.sgemm_n,
             sgemm_before, sgemm_after, sgemm);
  fmt::print("minor page faults per timed step: {:.0f}\n", static_cast<double>(faults_timed) / opt.steps);

  const double k = 1.0 / opt.steps;
  const double step_s = sum.step * k;
  const double tok_s = static_cast<double>(N) / step_s;
  const double gf_causal = flops_causal / step_s / 1e9;
  const double gf_peers = flops_peers / step_s / 1e9;
  const double rss = peak_rss_gib();
  fmt::print("\n");
  bench::Table summary({"impl", "preset", "B x T", "threads", "ms/step", "tok/s", "GFLOP/s (causal)", "MFU (causal)",
                        "GFLOP/s (PEERS conv.)", "MFU (PEERS conv.)", "sgemm GFLOP/s", "loss first -> last",
                        "peak RSS GiB"});
  summary.add({"cadtrain", opt.preset, fmt::format("{} x {}", B, T), fmt::format("{}", omp_get_max_threads()),
               fmt::format("{:.1f}", step_s * 1e3), fmt::format("{:.1f}", tok_s), fmt::format("{:.1f}", gf_causal),
               fmt::format("{:.1f}%", 100 * gf_causal / sgemm), fmt::format("{:.1f}", gf_peers),
               fmt::format("{:.1f}%", 100 * gf_peers / sgemm), fmt::format("{:.1f}", sgemm),
               fmt::format("{:.4f} -> {:.4f}", first_loss, last_loss), fmt::format("{:.2f}", rss)});
  summary.print();

  // Phase breakdown. Model FLOPs per phase (causal counting): the trunk's matmuls are 2 (forward)
  // and 4 (backward) x matmul weights x tokens, attention 4 and 8 x pairs x width per layer, the
  // LM head 2 + 4 x V C per token. The reference attention backward recomputes S (10, not 8).
  const double nt = static_cast<double>(tokens);
  const double head = static_cast<double>(d.vocab * d.c);
  const double trunk = static_cast<double>(d.matmul_params()) - head;
  double attn_layers = 0;
  for (const auto kind : d.kinds) attn_layers += kind == config::ATTENTION ? 1 : 0;
  const double attn_unit = static_cast<double>(pairs) * static_cast<double>(d.q_dim()) * attn_layers;
  const double fwd_s = sum.forward * k, bwd_s = sum.backward * k, attn_s = sum.core_attention * k;
  const double loss_s = sum.loss * k, opt_s = sum.optimizer * k;
  const double trunk_s = fwd_s + bwd_s - attn_s;
  const double other_s = step_s - fwd_s - bwd_s - loss_s - opt_s;
  bench::Table phases({"phase", "ms", "% of step", "model GFLOP", "GFLOP/s", "% of sgemm"});
  auto add = [&](const std::string& name, double s, double flops) {
    phases.add({name, fmt::format("{:.1f}", s * 1e3), fmt::format("{:.1f}%", 100 * s / step_s),
                flops > 0 ? fmt::format("{:.1f}", flops / 1e9) : "-",
                flops > 0 && s > 0 ? fmt::format("{:.1f}", flops / s / 1e9) : "-",
                flops > 0 && s > 0 ? fmt::format("{:.0f}%", 100 * flops / s / 1e9 / sgemm) : "-"});
  };
  fmt::print("\n");
  // The model records core attention as one sum over forward and backward, so the trunk
  // (everything but core attention and the LM head) is one row; the forward and backward rows
  // below it include their share of core attention.
  add("trunk fwd+bwd (linears, norms, RoPE, SwiGLU, embedding)", trunk_s, 6 * trunk * nt);
  add("  of which forward incl. core attn fwd", fwd_s, 2 * trunk * nt + 4 * attn_unit);
  add("  of which backward incl. core attn bwd", bwd_s, 4 * trunk * nt + 8 * attn_unit);
  add("core attention fwd+bwd (causal pairs)", attn_s, 12 * attn_unit);
  add("LM head + cross-entropy fwd+bwd", loss_s, 6 * head * nt);
  add("optimizer (zero grads, grad norm, AdamW)", opt_s, 0);
  add("other", other_s, 0);
  add("step", step_s, flops_causal);
  phases.print();

  if (!opt.json_path.empty()) {
    nlohmann::json j;
    j["impl"] = "cadtrain";
    j["preset"] = opt.preset;
    j["attention"] = opt.attention;
    j["batch"] = B;
    j["seq"] = T;
    j["threads"] = omp_get_max_threads();
    j["params"] = d.param_count();
    j["ms_per_step"] = step_s * 1e3;
    j["tokens_per_s"] = tok_s;
    j["gflops_causal"] = gf_causal;
    j["gflops_peers"] = gf_peers;
    j["sgemm_gflops"] = sgemm;
    j["sgemm_gflops_before_after"] = {sgemm_before, sgemm_after};
    j["mfu_causal"] = gf_causal / sgemm;
    j["mfu_peers"] = gf_peers / sgemm;
    j["first_loss"] = first_loss;
    j["last_loss"] = last_loss;
    j["peak_rss_gib"] = rss;
    j["page_faults_per_step"] = static_cast<double>(faults_timed) / opt.steps;
    j["phases_ms"] = {{"forward", fwd_s * 1e3},      {"backward", bwd_s * 1e3}, {"core_attention", attn_s * 1e3},
                      {"loss", loss_s * 1e3},        {"optimizer", opt_s * 1e3}, {"other", other_s * 1e3}};
    std::ofstream out(opt.json_path);
    out << j.dump(2) << "\n";
    CADTRAIN_CHECK(out.good(), "cannot write --json {}", opt.json_path);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Training-step throughput: forward, backward and AdamW on random tokens"};
  Options opt;
  app.add_option("--preset", opt.preset, "tiny (configs/tiny_cpu.pbtxt model) or gpt2-small")
      ->check(CLI::IsMember({"tiny", "gpt2-small"}));
  app.add_option("--batch", opt.batch, "sequences per micro-batch (default 4)")->check(CLI::PositiveNumber);
  app.add_option("--seq", opt.seq, "tokens per sequence (default 1024)")->check(CLI::PositiveNumber);
  app.add_option("--ffn", opt.ffn, "override the SwiGLU hidden width")->check(CLI::PositiveNumber);
  app.add_option("--steps", opt.steps, "timed steps (mean is reported)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", opt.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", opt.threads, "OpenMP threads (0 = OMP_NUM_THREADS or all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", opt.seed, "weights and tokens seed");
  app.add_option("--sgemm-size", opt.sgemm_n, "n of the n^3 sgemm reference")->check(CLI::PositiveNumber);
  app.add_option("--attention", opt.attention, "core attention kernel: tasks (fused) or reference")
      ->check(CLI::IsMember({"tasks", "reference"}));
  app.add_option("--json", opt.json_path, "also write the summary as JSON here");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(opt);
  } catch (const Error& e) {
    fmt::print(stderr, "train_bench: {}\n", e.what());
    return 1;
  }
}
