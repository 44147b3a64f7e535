// Cost of the top-K distillation term in the fused LM head: lm_head_cross_entropy forward and
// backward with and without TopKDistillArgs, on the same inputs in the same run (best of N).
// The LM head is the only place KD runs, so its ratio bounds KD's share of a training step.
// Usage: distill_bench [--tokens 1024 --width 256 --vocab 32000 --k 32 --repeats 7]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "bench/bench_util.h"
#include "common/rng.h"
#include "kernels/backend.h"

using namespace cadtrain;
using namespace cadtrain::kernels;

int main(int argc, char** argv) {
  CLI::App app{"distill_bench: KD overhead in the fused LM head"};
  int64_t n = 4096, c = 256, v = 32000, k = 32;
  int repeats = 3;
  app.add_option("--tokens", n, "Rows (tokens of a micro-batch)");
  app.add_option("--width", c, "Model width C");
  app.add_option("--vocab", v, "Vocabulary V");
  app.add_option("--k", k, "Teacher ids per token");
  app.add_option("--repeats", repeats, "Timed runs; the best is reported");
  CLI11_PARSE(app, argc, argv);

  auto be = make_cpu_backend();
  Rng rng(1);
  std::vector<float> h(n * c), w(v * c), dh(n * c), dw(v * c, 0.0f);
  for (auto& x : h) x = static_cast<float>(rng.normal());
  for (auto& x : w) x = static_cast<float>(0.05 * rng.normal());
  std::vector<uint32_t> targets(n);
  for (auto& t : targets) t = static_cast<uint32_t>(rng.below(v));
  // Teacher rows: K distinct ids with log-probabilities that sum to a mass below 1.
  std::vector<int32_t> ids(n * k);
  std::vector<float> logprobs(n * k);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      ids[i * k + j] = static_cast<int32_t>((static_cast<uint64_t>(i) * 7919 + j * 997) % v);
      logprobs[i * k + j] = static_cast<float>(-1.0 - 0.2 * j);
    }
  }
  TopKDistillArgs kd;
  kd.ids = ids.data(), kd.logprobs = logprobs.data(), kd.k = k, kd.weight = 0.5f, kd.temperature = 2.0f;
  LmHeadLossArgs a;
  a.h = h.data(), a.w = w.data(), a.targets = targets.data(), a.n = n, a.c = c, a.v = v;
  a.dh = dh.data(), a.dw = dw.data();

  bench::Table table({"LM head fwd+bwd", "shape", "ms", "vs CE"});
  const std::string shape = fmt::format("{} x {} -> {}, K {}", n, c, v, k);
  // Warm-up (scratch buffers, thread pool), then CE and CE + KD alternately, best of each: on a
  // shared machine, load drifts between runs, and alternating exposes both to the same drift.
  a.distill = &kd;
  be->lm_head_cross_entropy(a);
  double ce = 1e300, with_kd = 1e300;
  for (int r = 0; r < repeats; ++r) {
    a.distill = nullptr;
    ce = std::min(ce, bench::best_seconds(1, [&] { be->lm_head_cross_entropy(a); }));
    a.distill = &kd;
    with_kd = std::min(with_kd, bench::best_seconds(1, [&] { be->lm_head_cross_entropy(a); }));
  }
  table.add({"cross-entropy (reference)", shape, fmt::format("{:.1f}", ce * 1e3), "1.00"});
  table.add({"cross-entropy + top-K KD", shape, fmt::format("{:.1f}", with_kd * 1e3),
             fmt::format("{:.3f}", with_kd / ce)});
  table.print();
  return 0;
}
