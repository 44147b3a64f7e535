// Collective benchmark in the style of nccl-tests, for the MPI backend of parallel::Communicator:
// for each size, time per operation, algorithm bandwidth (bytes / time) and bus bandwidth (scaled
// so that figures compare across rank counts: 2(n-1)/n for all-reduce, (n-1)/n for all-to-all,
// 1 for send/recv), beside the plain MPI call of the same size measured in the same run.
// Correctness is checked exactly on crafted inputs outside the timed loop (#wrong columns).
//
//   mpirun --oversubscribe -np 2 build/bench/comm_bench [--max-bytes 67108864] [--iters 20]
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "bench/bench_util.h"
#include "parallel/mpi_runtime.h"

namespace cadtrain::bench {
namespace {

using parallel::Communicator;

// Mean seconds per call over `iters` calls after `warmup`, the slowest rank's figure.
double time_op(const std::function<void()>& op, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) op();
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = MPI_Wtime();
  for (int i = 0; i < iters; ++i) op();
  double t = (MPI_Wtime() - start) / iters;
  MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return t;
}

// Elements that differ from `expect`, summed over ranks.
long count_wrong(const std::vector<float>& got, const std::vector<float>& expect) {
  long wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) wrong += got[i] != expect[i] ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  return wrong;
}

float crafted(int rank, size_t i) { return static_cast<float>((i * 7 + static_cast<size_t>(rank) * 13) % 29); }

struct Case {
  std::string name;
  double bus_factor;
  // Runs ours (true) or plain MPI (false) once on n floats per rank.
  std::function<void(bool ours)> run;
  // Runs ours or MPI once on crafted inputs and returns the wrong count.
  std::function<long(bool ours)> check;
};

Case all_reduce_case(Communicator& c, size_t n) {
  const int p = c.size();
  auto send = std::make_shared<std::vector<float>>(n, 1.0f), recv = std::make_shared<std::vector<float>>(n, 0.0f);
  Case k{"all_reduce", 2.0 * (p - 1) / p, nullptr, nullptr};
  k.run = [&c, send, recv, n](bool ours) {
    if (ours) c.iall_reduce(host_view(std::as_const(*send)), host_view(*recv), parallel::ReduceOp::SUM).wait();
    else MPI_Allreduce(send->data(), recv->data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  };
  k.check = [&c, n, p](bool ours) {
    std::vector<float> x(n), expect(n, 0.0f);
    for (size_t i = 0; i < n; ++i) {
      x[i] = crafted(c.rank(), i);
      for (int r = 0; r < p; ++r) expect[i] += crafted(r, i);
    }
    if (ours) c.all_reduce(host_view(x), parallel::ReduceOp::SUM);
    else MPI_Allreduce(MPI_IN_PLACE, x.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    return count_wrong(x, expect);
  };
  return k;
}

// Each rank sends n/p floats to every rank (the last block takes the remainder).
Case all_to_all_v_case(Communicator& c, size_t n) {
  const int p = c.size();
  std::vector<size_t> counts(static_cast<size_t>(p), n / static_cast<size_t>(p));
  counts.back() += n % static_cast<size_t>(p);
  auto sc = std::make_shared<std::vector<size_t>>(counts);
  auto ic = std::make_shared<std::vector<int>>(counts.begin(), counts.end());
  auto displs = std::make_shared<std::vector<int>>(static_cast<size_t>(p), 0);
  for (size_t j = 1; j < counts.size(); ++j) (*displs)[j] = (*displs)[j - 1] + (*ic)[j - 1];
  auto send = std::make_shared<std::vector<float>>(n, 1.0f), recv = std::make_shared<std::vector<float>>(n, 0.0f);
  const auto mpi = [=](const float* s, float* r) {
    MPI_Alltoallv(s, ic->data(), displs->data(), MPI_FLOAT, r, ic->data(), displs->data(), MPI_FLOAT, MPI_COMM_WORLD);
  };
  Case k{"all_to_all_v", static_cast<double>(p - 1) / p, nullptr, nullptr};
  k.run = [&c, sc, send, recv, mpi](bool ours) {
    if (ours) c.all_to_all_v(host_view(std::as_const(*send)), *sc, host_view(*recv), *sc);
    else mpi(send->data(), recv->data());
  };
  k.check = [&c, sc, displs, mpi, n, p](bool ours) {
    // Element i of the block for rank j from rank s: crafted(s, j * n + i).
    std::vector<float> s(n), r(n, -1.0f), expect(n);
    for (int j = 0; j < p; ++j) {
      for (size_t i = 0; i < (*sc)[static_cast<size_t>(j)]; ++i) {
        s[static_cast<size_t>((*displs)[static_cast<size_t>(j)]) + i] = crafted(c.rank(), static_cast<size_t>(j) * n + i);
        expect[static_cast<size_t>((*displs)[static_cast<size_t>(j)]) + i] = crafted(j, static_cast<size_t>(c.rank()) * n + i);
      }
    }
    if (ours) c.all_to_all_v(host_view(std::as_const(s)), *sc, host_view(r), *sc);
    else mpi(s.data(), r.data());
    return count_wrong(r, expect);
  };
  return k;
}

// Every rank sends n floats to rank+1 and receives n from rank-1 at once (nccl-tests sendrecv).
Case send_recv_case(Communicator& c, size_t n) {
  const int p = c.size(), next = (c.rank() + 1) % p, prev = (c.rank() + p - 1) % p;
  auto send = std::make_shared<std::vector<float>>(n, 1.0f), recv = std::make_shared<std::vector<float>>(n, 0.0f);
  const auto exchange = [&c, next, prev, n](const std::vector<float>& s, std::vector<float>& r, bool ours) {
    if (ours) {
      parallel::Request rr = c.irecv(host_view(r), prev, 1);
      parallel::Request sr = c.isend(host_view(s), next, 1);
      rr.wait();
      sr.wait();
    } else {
      MPI_Sendrecv(s.data(), static_cast<int>(n), MPI_FLOAT, next, 1, r.data(), static_cast<int>(n), MPI_FLOAT, prev, 1,
                   MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
  };
  Case k{"send_recv", 1.0, nullptr, nullptr};
  k.run = [send, recv, exchange](bool ours) { exchange(*send, *recv, ours); };
  k.check = [&c, n, prev, exchange](bool ours) {
    std::vector<float> s(n), r(n, -1.0f), expect(n);
    for (size_t i = 0; i < n; ++i) {
      s[i] = crafted(c.rank(), i);
      expect[i] = crafted(prev, i);
    }
    exchange(s, r, ours);
    return count_wrong(r, expect);
  };
  return k;
}

std::string size_text(size_t bytes) {
  if (bytes >= (1u << 20)) return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= (1u << 10)) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} B", bytes);
}

}  // namespace
}  // namespace cadtrain::bench

int main(int argc, char** argv) {
  using namespace cadtrain;
  parallel::MpiRuntime mpi(&argc, &argv);
  CLI::App app{"Collective benchmark: parallel::Communicator (MPI backend) vs plain MPI"};
  size_t min_bytes = 8, max_bytes = size_t{64} << 20;
  int iters = 20, warmup = 3;
  std::vector<std::string> ops{"all_reduce", "all_to_all_v", "send_recv"};
  app.add_option("--min-bytes", min_bytes, "smallest message per rank");
  app.add_option("--max-bytes", max_bytes, "largest message per rank");
  app.add_option("--iters", iters, "timed iterations per size (fewer above 1 MiB)");
  app.add_option("--warmup", warmup, "untimed iterations per size");
  app.add_option("--ops", ops, "operations to run");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    auto world = mpi.world(600);
    const int p = world->size();
    if (world->rank() == 0) {
      fmt::print("# {} ranks, float32, time per operation = the slowest rank's mean over the timed iterations\n", p);
      fmt::print("# busbw = algbw x {{all_reduce 2(n-1)/n, all_to_all_v (n-1)/n, send_recv 1}}\n");
    }
    for (const auto& op : ops) {
      bench::Table table({"op", "size/rank", "ours us", "ours algbw GB/s", "ours busbw GB/s", "ours #wrong", "MPI us",
                          "MPI algbw GB/s", "MPI busbw GB/s", "MPI #wrong", "ours/MPI time"});
      for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 8) {
        const size_t n = std::max<size_t>(1, bytes / sizeof(float));
        bench::Case k = op == "all_reduce"     ? bench::all_reduce_case(*world, n)
                        : op == "all_to_all_v" ? bench::all_to_all_v_case(*world, n)
                        : op == "send_recv"    ? bench::send_recv_case(*world, n)
                                               : throw Error("unknown --ops entry " + op);
        const long wrong_ours = k.check(true), wrong_mpi = k.check(false);
        const int it = bytes > (size_t{1} << 20) ? std::max(3, iters / 4) : iters;
        // Alternate the two so that machine noise falls on both alike; keep each side's best.
        double ours = 1e300, plain = 1e300;
        for (int round = 0; round < 3; ++round) {
          ours = std::min(ours, bench::time_op([&] { k.run(true); }, warmup, it));
          plain = std::min(plain, bench::time_op([&] { k.run(false); }, warmup, it));
        }
        const double total = static_cast<double>(n * sizeof(float));
        const auto gbs = [&](double t) { return total / t / 1e9; };
        table.add({op, bench::size_text(n * sizeof(float)), fmt::format("{:.1f}", ours * 1e6),
                   fmt::format("{:.3f}", gbs(ours)), fmt::format("{:.3f}", gbs(ours) * k.bus_factor),
                   std::to_string(wrong_ours), fmt::format("{:.1f}", plain * 1e6), fmt::format("{:.3f}", gbs(plain)),
                   fmt::format("{:.3f}", gbs(plain) * k.bus_factor), std::to_string(wrong_mpi),
                   fmt::format("{:.2f}", ours / plain)});
      }
      if (world->rank() == 0) {
        table.print();
        fmt::print("\n");
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    mpi.abort_job(1);
  }
  return 0;
}
