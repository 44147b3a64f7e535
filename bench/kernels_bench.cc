// CPU kernel throughput on GPT-2-small shapes (N tokens in sequences of 1024, C 768, F 3072,
// V 50257, 12 heads of 64). Matmul-bound ops are reported in GFLOP/s beside OpenBLAS sgemm on
// 2048^3 measured in the same run; memory-bound ops in GB/s (the bytes the op must read and write)
// beside an OpenMP triad (a = b + s c) moving the same number of bytes, measured in the same run
// (same working set, so both see the same cache level).
//
//   build/bench/kernels_bench [--tokens N] [--repeats R]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/error.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "kernels/cpu/blas_info.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/sgemm_peak.h"

using namespace cadtrain;
using namespace cadtrain::kernels;

namespace {

// A backend buffer filled with small normal values (no denormals, no overflow).
struct Buffer {
  Backend& be;
  float* p;
  size_t n;
  Buffer(Backend& backend, size_t count, uint64_t seed, double scale = 1.0) : be(backend), p(be.alloc(count)), n(count) {
    Rng rng(seed);
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(scale * rng.normal());
  }
  ~Buffer() { be.free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

// GB/s of a = b + s c over three arrays that together move `bytes`: the memory reference.
double triad_gbps(double bytes, int repeats) {
  const auto n = static_cast<int64_t>(bytes / (3 * sizeof(float)));
  std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
  float* pa = a.data();
  const float *pb = b.data(), *pc = c.data();
  const double s = bench::best_seconds(repeats + 1, [&] {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) pa[i] = pb[i] + 0.5f * pc[i];
  });
  return 3.0 * sizeof(float) * static_cast<double>(n) / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU kernel throughput on GPT-2-small shapes"};
  int64_t n = 4096;
  int repeats = 3;
  app.add_option("--tokens", n, "tokens per micro-batch (multiple of 1024)")->check(CLI::PositiveNumber);
  app.add_option("--repeats", repeats, "timed runs per op (best is reported)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    CADTRAIN_CHECK(n % 1024 == 0, "--tokens {} must be a multiple of the sequence length 1024", n);
    const int64_t C = 768, F = 3072, V = 50257, H = 12, D = 64, T = 1024;
    cpu::CpuBackend be;
    fmt::print("| parameter | value |\n|---|---|\n");
    fmt::print("| backend | {} |\n| blas library | {} |\n", be.name(), cpu::blas_library_path());
    fmt::print("| shapes | N {} (sequences of {}), C {}, F {}, V {}, {} heads of {} |\n| repeats | best of {} |\n\n", n,
               T, C, F, V, H, D, repeats);

    const double sgemm = measure_sgemm_gflops(2048, 3);
    std::map<double, double> triads;  // bytes -> GB/s
    bench::Table table({"op", "shape", "ms", "ours", "reference", "ratio"});
    auto add_flops = [&](const std::string& op, const std::string& shape, double flops, int reps,
                         const std::function<void()>& fn) {
      const double s = bench::best_seconds(reps, fn);
      const double gf = flops / s / 1e9;
      table.add({op, shape, fmt::format("{:.2f}", s * 1e3), fmt::format("{:.1f} GFLOP/s", gf),
                 fmt::format("{:.1f} GFLOP/s sgemm", sgemm), fmt::format("{:.2f}", gf / sgemm)});
    };
    auto add_bytes = [&](const std::string& op, const std::string& shape, double bytes,
                         const std::function<void()>& fn) {
      const double s = bench::best_seconds(repeats, fn);
      const double gbps = bytes / s / 1e9;
      if (!triads.contains(bytes)) triads[bytes] = triad_gbps(bytes, repeats);
      const double triad = triads[bytes];
      table.add({op, shape, fmt::format("{:.2f}", s * 1e3), fmt::format("{:.1f} GB/s", gbps),
                 fmt::format("{:.1f} GB/s triad", triad), fmt::format("{:.2f}", gbps / triad)});
    };
    table.add({"sgemm (reference)", "2048^3", fmt::format("{:.2f}", 2.0 * 2048 * 2048 * 2048 / sgemm / 1e6),
               fmt::format("{:.1f} GFLOP/s", sgemm), "-", "1.00"});

    // Linear layers: y[N,O] = x[N,I] W[O,I]^T; backward dx = dy W and dw += dy^T x.
    {
      Buffer x(be, n * F, 1), w(be, F * C, 2, 0.02), y(be, n * F, 3), dx(be, n * F, 4), dw(be, F * C, 5);
      const double nf = static_cast<double>(n);
      for (const auto& [in, out, name] : {std::tuple{C, 3 * C, "qkv"}, std::tuple{C, F, "fc"}, std::tuple{F, C, "proj"}}) {
        const std::string shape = fmt::format("{} x {} -> {}", n, in, out);
        add_flops(fmt::format("linear fwd ({})", name), shape, 2 * nf * in * out, repeats,
                  [&] { be.linear_forward(y.p, x.p, w.p, n, in, out); });
        add_flops(fmt::format("linear bwd ({})", name), shape, 4 * nf * in * out, repeats,
                  [&] { be.linear_backward(dx.p, dw.p, y.p, x.p, w.p, n, in, out, false); });
      }
    }

    // Fused LM head + cross-entropy.
    {
      Buffer h(be, n * C, 6), w(be, V * C, 7, 0.02), dh(be, n * C, 8), dw(be, V * C, 9);
      std::vector<uint32_t> targets(n);
      Rng rng(10);
      for (auto& t : targets) t = static_cast<uint32_t>(rng.below(V));
      LmHeadLossArgs a;
      a.h = h.p, a.w = w.p, a.targets = targets.data(), a.n = n, a.c = C, a.v = V;
      const std::string shape = fmt::format("{} x {} -> {}", n, C, V);
      const double flops = 2.0 * n * C * V;
      const int reps = std::min(repeats, 2);
      add_flops("lm_head_cross_entropy fwd", shape, flops, reps, [&] { be.lm_head_cross_entropy(a); });
      a.dh = dh.p, a.dw = dw.p;
      add_flops("lm_head_cross_entropy fwd+bwd", shape, 3 * flops, reps, [&] { be.lm_head_cross_entropy(a); });
    }

    // Core attention, reference and fused task kernels; FLOPs count causal pairs only: T(T+1)/2
    // per sequence.
    for (const bool fused : {false, true}) {
      auto attn = fused ? make_local_task_attention() : make_local_reference_attention();
      const char* kind = fused ? "fused" : "reference";
      const size_t qsize = n * H * D;
      Buffer q(be, qsize, 11), k(be, qsize, 12), v(be, qsize, 13), o(be, qsize, 14), lse(be, n * H, 15);
      Buffer dout(be, qsize, 16), dq(be, qsize, 17), dk(be, qsize, 18), dv(be, qsize, 19);
      std::vector<int32_t> cu;
      for (int64_t t = 0; t <= n; t += T) cu.push_back(static_cast<int32_t>(t));
      const AttentionShape shape{n, H, H, D, 0.125f};
      const SequenceLayout layout{cu.data(), static_cast<int64_t>(cu.size()) - 1};
      const double pairs = static_cast<double>(layout.n_seqs) * T * (T + 1) / 2;
      const double fwd = 4.0 * pairs * D * H;
      const std::string desc = fmt::format("{} x {} heads x {}, T {}", n, H, D, T);
      add_flops(fmt::format("attention {} fwd", kind), desc, fwd, repeats,
                [&] { attention_forward_all(*attn, o.p, lse.p, q.p, k.p, v.p, shape, layout); });
      add_flops(fmt::format("attention {} bwd", kind), desc, 2.5 * fwd, repeats,
                [&] { attention_backward_all(*attn, dq.p, dk.p, dv.p, dout.p, q.p, k.p, v.p, o.p, lse.p, shape, layout); });
    }

    // Memory-bound ops: bytes = what the op must read and write, 4 per float.
    {
      const size_t nc = n * C, nf = n * F;
      const std::string s_nc = fmt::format("{} x {}", n, C), s_nf = fmt::format("{} x {}", n, F);
      Buffer a(be, nf, 20), b(be, nf, 21), c(be, nf, 22), d(be, nf, 23), e(be, nf, 24);
      Buffer w(be, C * 3, 25), rstd(be, n, 26), emb(be, V * C, 27, 0.02);
      std::vector<int32_t> pos(n), cu;
      for (int64_t t = 0; t < n; ++t) pos[t] = static_cast<int32_t>(t % T);
      for (int64_t t = 0; t <= n; t += T) cu.push_back(static_cast<int32_t>(t));
      std::vector<uint32_t> tokens(n);
      Rng rng(28);
      for (auto& t : tokens) t = static_cast<uint32_t>(rng.below(V));
      const int64_t seqs = static_cast<int64_t>(cu.size()) - 1;
      const double f4 = sizeof(float);
      add_bytes("embedding fwd", s_nc, 2 * f4 * nc, [&] { be.embedding_forward(a.p, tokens.data(), emb.p, n, C); });
      add_bytes("embedding bwd", s_nc, 3 * f4 * nc, [&] { be.embedding_backward(emb.p, b.p, tokens.data(), n, C); });
      add_bytes("rmsnorm fwd", s_nc, 2 * f4 * nc, [&] { be.rmsnorm_forward(a.p, rstd.p, b.p, w.p, n, C, 1e-5f); });
      add_bytes("rmsnorm bwd", s_nc, 3 * f4 * nc,
                [&] { be.rmsnorm_backward(c.p, w.p, a.p, b.p, w.p, rstd.p, n, C); });
      add_bytes("rope fwd (q)", fmt::format("{} x {} x {}", n, H, D), 2 * f4 * nc,
                [&] { be.rope_forward(a.p, pos.data(), n, H, D, 10000.0f); });
      add_bytes("rope bwd (q)", fmt::format("{} x {} x {}", n, H, D), 2 * f4 * nc,
                [&] { be.rope_backward(a.p, pos.data(), n, H, D, 10000.0f); });
      add_bytes("swiglu fwd", s_nf, 3 * f4 * nf, [&] { be.swiglu_forward(a.p, b.p, c.p, nf); });
      add_bytes("swiglu bwd", s_nf, 5 * f4 * nf, [&] { be.swiglu_backward(d.p, e.p, a.p, b.p, c.p, nf); });
      add_bytes("mul fwd", s_nc, 3 * f4 * nc, [&] { be.mul_forward(a.p, b.p, c.p, nc); });
      add_bytes("mul bwd", s_nc, 5 * f4 * nc, [&] { be.mul_backward(d.p, e.p, a.p, b.p, c.p, nc); });
      add_bytes("short_conv fwd (k 3)", s_nc, 2 * f4 * nc,
                [&] { be.short_conv_forward(a.p, b.p, w.p, cu.data(), seqs, C, 3); });
      add_bytes("short_conv bwd (k 3)", s_nc, 3 * f4 * nc,
                [&] { be.short_conv_backward(a.p, w.p, b.p, c.p, w.p, cu.data(), seqs, C, 3); });
      add_bytes("accumulate", s_nc, 3 * f4 * nc, [&] { be.accumulate(a.p, b.p, nc); });
      add_bytes("scale", s_nc, 2 * f4 * nc, [&] { be.scale(a.p, 0.999f, nc); });
      add_bytes("sum_squares", s_nf, f4 * nf, [&] { (void)be.sum_squares(a.p, nf); });
    }
    {
      const size_t count = V * C;
      Buffer p(be, count, 30, 0.02), g(be, count, 31, 1e-3), m(be, count, 32, 1e-3), v(be, count, 33, 1e-3);
      for (size_t i = 0; i < count; ++i) v.p[i] *= v.p[i];  // v >= 0
      int64_t step = 1;
      add_bytes("adamw_step", fmt::format("{} x {} params", V, C), 7 * sizeof(float) * static_cast<double>(count),
                [&] { be.adamw_step(p.p, g.p, m.p, v.p, count, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, step++); });
    }
    table.print();
  } catch (const Error& e) {
    fmt::print(stderr, "kernels_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
