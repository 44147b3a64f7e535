// Core attention throughput: the fused task kernel (kernels/attention_tasks.h, through
// make_local_task_attention) beside the sgemm-based reference kernel and OpenBLAS sgemm on 2048^3,
// all measured in the same run. GFLOP/s count causal pairs (DESIGN section 3): forward
// 4 * pairs * D * q_heads, backward 2.5x that. q_heads * D = 512 (8 x 64 or 4 x 128), kv heads =
// q heads; batches: one 4K document, one 16K document, and a long-tailed mix of 16K tokens. A
// second table runs the fused kernel at d=128 on batches of equal documents of 32 to 2048 tokens
// (same total tokens): the rate as a function of document length, which is what separates the
// mix from one long document.
//
//   build/bench/attention_bench [--repeats R] [--skip-16k]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/error.h"
#include "common/rng.h"
#include "kernels/core_attention.h"
#include "kernels/sgemm_peak.h"

using namespace cadtrain;
using namespace cadtrain::kernels;

namespace {

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

// A long-tailed mix of `total` tokens: mostly short documents, a few long ones (Pareto-like).
std::vector<int32_t> varlen_mix(int64_t total, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> cu = {0};
  while (cu.back() < total) {
    const double u = (static_cast<double>(rng.below(1u << 20)) + 0.5) / (1u << 20);
    auto len = static_cast<int64_t>(16.0 / std::pow(u, 1.0 / 1.1));  // tail exponent 1.1, minimum 16
    len = std::min<int64_t>({len, 8192, total - cu.back()});
    cu.push_back(static_cast<int32_t>(cu.back() + len));
  }
  return cu;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Core attention throughput: fused task kernel vs reference kernel vs sgemm"};
  int repeats = 3;
  bool skip_16k = false;
  app.add_option("--repeats", repeats, "timed runs per op (best is reported)")->check(CLI::PositiveNumber);
  app.add_flag("--skip-16k", skip_16k, "leave out the 16K-token batches");
  CLI11_PARSE(app, argc, argv);
  try {
    const double sgemm = measure_sgemm_gflops(2048, 3);
    fmt::print("| parameter | value |\n|---|---|\n| threads | {} |\n| repeats | best of {} (after 1 warm-up) |\n",
               omp_get_max_threads(), repeats);
    fmt::print("| sgemm 2048^3 | {:.1f} GFLOP/s |\n\n", sgemm);
    struct Batch {
      std::string name;
      std::vector<int32_t> cu;
    };
    std::vector<Batch> batches = {{"1 doc x 4K", {0, 4096}}};
    if (!skip_16k) batches.push_back({"1 doc x 16K", {0, 16384}});
    {
      const auto cu = varlen_mix(skip_16k ? 4096 : 16384, 7);
      batches.push_back({fmt::format("varlen mix {} docs, {} tok", cu.size() - 1, cu.back()), cu});
    }
    bench::Table table({"d", "batch", "kernel", "fwd ms", "fwd GFLOP/s", "fwd / sgemm", "bwd ms", "bwd GFLOP/s",
                        "bwd / sgemm"});
    for (const int64_t d : {64, 128}) {
      const int64_t heads = 512 / d;
      for (const Batch& b : batches) {
        const int64_t n = b.cu.back();
        double pairs = 0;
        for (size_t s = 0; s + 1 < b.cu.size(); ++s) {
          const double len = b.cu[s + 1] - b.cu[s];
          pairs += len * (len + 1) / 2;
        }
        const double fwd_flops = 4.0 * pairs * static_cast<double>(d * heads), bwd_flops = 2.5 * fwd_flops;
        const AttentionShape shape{n, heads, heads, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
        const SequenceLayout layout{b.cu.data(), static_cast<int64_t>(b.cu.size()) - 1};
        const auto q = randn(n * heads * d, 1), k = randn(n * heads * d, 2), v = randn(n * heads * d, 3),
                   dout = randn(n * heads * d, 4);
        std::vector<float> o(q.size()), lse(n * heads), dq(q.size()), dk(k.size()), dv(v.size());
        for (const bool fused : {false, true}) {
          auto attn = fused ? make_local_task_attention() : make_local_reference_attention();
          auto fwd = [&] { attention_forward_all(*attn, o.data(), lse.data(), q.data(), k.data(), v.data(), shape, layout); };
          auto bwd = [&] {
            attention_backward_all(*attn, dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), o.data(),
                           lse.data(), shape, layout);
          };
          fwd();  // warm-up (scratch buffers, caches)
          const double tf = bench::best_seconds(repeats, fwd);
          bwd();
          const double tb = bench::best_seconds(repeats, bwd);
          const double gf = fwd_flops / tf / 1e9, gb = bwd_flops / tb / 1e9;
          table.add({fmt::format("{}", d), b.name, fused ? "fused tasks" : "reference", fmt::format("{:.2f}", tf * 1e3),
                     fmt::format("{:.1f}", gf), fmt::format("{:.2f}", gf / sgemm), fmt::format("{:.2f}", tb * 1e3),
                     fmt::format("{:.1f}", gb), fmt::format("{:.2f}", gb / sgemm)});
        }
      }
    }
    table.print();

    // The fused kernel's rate by document length, d = 128.
    const int64_t total = skip_16k ? 4096 : 16384, d = 128, heads = 4;
    fmt::print("\nFused kernel, d {}, {} heads, {} tokens of equal documents:\n\n", d, heads, total);
    bench::Table by_len({"doc tokens", "docs", "fwd GFLOP/s", "fwd / sgemm", "bwd GFLOP/s", "bwd / sgemm"});
    const AttentionShape shape{total, heads, heads, d, static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
    const auto q = randn(total * heads * d, 1), k = randn(total * heads * d, 2), v = randn(total * heads * d, 3),
               dout = randn(total * heads * d, 4);
    std::vector<float> o(q.size()), lse(total * heads), dq(q.size()), dk(k.size()), dv(v.size());
    auto attn = make_local_task_attention();
    for (const int64_t len : {32, 128, 512, 2048}) {
      std::vector<int32_t> cu;
      for (int64_t t = 0; t <= total; t += len) cu.push_back(static_cast<int32_t>(t));
      const SequenceLayout layout{cu.data(), static_cast<int64_t>(cu.size()) - 1};
      const double flops = 4.0 * static_cast<double>(layout.n_seqs) * len * (len + 1) / 2 * d * heads;
      auto fwd = [&] { attention_forward_all(*attn, o.data(), lse.data(), q.data(), k.data(), v.data(), shape, layout); };
      auto bwd = [&] {
        attention_backward_all(*attn, dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), o.data(),
                       lse.data(), shape, layout);
      };
      fwd();
      const double gf = flops / bench::best_seconds(repeats, fwd) / 1e9;
      bwd();
      const double gb = 2.5 * flops / bench::best_seconds(repeats, bwd) / 1e9;
      by_len.add({fmt::format("{}", len), fmt::format("{}", layout.n_seqs), fmt::format("{:.1f}", gf),
                  fmt::format("{:.2f}", gf / sgemm), fmt::format("{:.1f}", gb), fmt::format("{:.2f}", gb / sgemm)});
    }
    by_len.print();
  } catch (const std::exception& e) {
    fmt::print(stderr, "attention_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
