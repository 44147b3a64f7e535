// Measures the fused core-attention kernel (forward + backward) on single causal tasks of q query
// rows and k key rows (ending on the diagonal) and prints the throughput grid as
// attention.cad.calibration entries a config can carry (attention.cad.calibrate_cost: true). The
// reference in the same run: the rate of the largest task, which the table's cost model treats as
// full speed. Shape flags default to one kv group of the Llama-8B shape (4 query heads, 1 kv head,
// head_dim 128) so the CPU run stays short. --out writes the table as a file a config carries:
// its text is the value of attention.cad.calibration (see configs/cad_calibration_cpu.txt).
//   build/bench/cad_calibrate [--q 128,512,2048] [--k 128,512,2048,8192] [--out table.txt]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "common/rng.h"
#include "kernels/attention_tasks.h"

using namespace cadtrain;

int main(int argc, char** argv) {
  CLI::App app{"Core-attention kernel throughput per task size, as attention.cad.calibration"};
  std::vector<int64_t> qs = {128, 512, 2048}, ks = {128, 512, 2048, 8192};
  int64_t hq = 4, hk = 1, dim = 128;
  int repeats = 3;
  std::string out_path, machine = "this machine";
  app.add_option("--q", qs, "Query rows")->delimiter(',');
  app.add_option("--k", ks, "Key rows")->delimiter(',');
  app.add_option("--q-heads", hq);
  app.add_option("--kv-heads", hk);
  app.add_option("--head-dim", dim);
  app.add_option("--repeats", repeats);
  app.add_option("--out", out_path, "Write the table as the value of attention.cad.calibration");
  app.add_option("--machine", machine, "What ran it, for the file's header");
  CLI11_PARSE(app, argc, argv);

  const int64_t kmax = *std::max_element(ks.begin(), ks.end()), qmax = *std::max_element(qs.begin(), qs.end());
  Rng rng(1);
  auto randv = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(rng.normal());
    return v;
  };
  const std::vector<float> q = randv(qmax * hq * dim), k = randv(kmax * hk * dim), v = randv(kmax * hk * dim),
                           dout = randv(qmax * hq * dim);
  std::vector<float> o(q.size()), lse(static_cast<size_t>(qmax * hq)), dq(q.size()), dk(k.size()), dv(v.size());
  const kernels::AttentionDims dims{hq, hk, dim, static_cast<float>(1 / std::sqrt(static_cast<double>(dim)))};
  struct Point {
    int64_t q, k;
    double rate;
  };
  std::vector<Point> points;
  double best = 0;
  for (int64_t nq : qs) {
    for (int64_t nk : ks) {
      if (nk < nq) continue;
      const kernels::AttentionTask task{0, nq, 0, nk, nk - nq, 0, true};
      const double pairs = static_cast<double>(kernels::task_pairs(task));
      const double s = bench::best_seconds(repeats, [&] {
        kernels::attention_forward_tasks(o.data(), lse.data(), q.data(), k.data(), v.data(), {&task, 1}, dims);
        std::fill(dk.begin(), dk.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        kernels::attention_backward_tasks(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                                          o.data(), lse.data(), {&task, 1}, dims);
      });
      points.push_back({nq, nk, pairs / s});
      best = std::max(best, pairs / s);
      fmt::print(stderr, "q {} k {}: {:.3g} pairs/s\n", nq, nk, pairs / s);
    }
  }
  bench::Table table({"q", "k", "pairs/s (fwd+bwd)", "vs best"});
  for (const auto& p : points) {
    table.add({std::to_string(p.q), std::to_string(p.k), fmt::format("{:.3g}", p.rate), fmt::format("{:.2f}", p.rate / best)});
  }
  table.print();
  fmt::print("\n# attention.cad entries ({} q heads, {} kv heads, head_dim {}):\n", hq, hk, dim);
  for (const auto& p : points) fmt::print("calibration {{ q: {} k: {} pairs_per_s: {:.4g} }}\n", p.q, p.k, p.rate);
  if (!out_path.empty()) {
    std::ofstream out(out_path);
    out << fmt::format(
        "# Core-attention kernel throughput (causal pairs/s, forward + backward, fp32 CPU kernels of\n"
        "# kernels/attention_tasks.h) per task of q query rows and k key rows ending on the diagonal;\n"
        "# {} q heads, {} kv heads, head_dim {}; best of {} runs; measured on {}.\n"
        "# Written by bench/cad_calibrate --out.\n"
        "# The whole file is the value of attention.cad.calibration:\n"
        "#   --set attention.cad.calibrate_cost=true --set \"attention.cad.calibration=$(cat FILE)\"\n"
        "# (or write each entry as `calibration {{ q: .. k: .. pairs_per_s: .. }}` inside attention {{ cad {{ }} }}).\n"
        "[\n",
        hq, hk, dim, repeats, machine);
    for (size_t i = 0; i < points.size(); ++i) {
      out << fmt::format("  {{ q: {} k: {} pairs_per_s: {:.4g} }}{}\n", points[i].q, points[i].k, points[i].rate,
                         i + 1 < points.size() ? "," : "");
    }
    out << "]\n";
    if (!out) {
      fmt::print(stderr, "cad_calibrate: cannot write {}\n", out_path);
      return 1;
    }
  }
  return 0;
}
