// The MPI communicator under mpirun (2, 3 and 4 ranks): every operation checked exactly against
// inputs every rank can compute for every other rank, including uneven blocks, empty buffers,
// zero counts and the rank order of floating-point sums.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "parallel/communicator.h"
#include "tests/mpi/mpi_test_main.h"
#include "tests/test_util.h"

namespace cadtrain {
namespace {

using parallel::Communicator;
using parallel::ReduceOp;
using test::world;

// Rank r's element i: distinct per (rank, element), exact in every type used here, and negative
// for some, so that MAX and MIN are not decided by rank alone.
template <typename T>
T value(int r, size_t i) {
  const int64_t v = static_cast<int64_t>((i * 7 + static_cast<size_t>(r) * 13) % 29) - 9;
  if constexpr (std::is_unsigned_v<T>) return static_cast<T>(v + 9);
  return static_cast<T>(v);
}

template <typename T>
std::vector<T> input(int r, size_t n) {
  std::vector<T> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = value<T>(r, i);
  return x;
}

template <typename T>
std::vector<T> reference(int p, size_t n, ReduceOp op) {
  std::vector<T> out = input<T>(0, n);
  for (int r = 1; r < p; ++r) {
    for (size_t i = 0; i < n; ++i) {
      const T x = value<T>(r, i);
      out[i] = op == ReduceOp::SUM ? out[i] + x : op == ReduceOp::MAX ? std::max(out[i], x) : std::min(out[i], x);
    }
  }
  return out;
}

// Sizes with blocks of unequal length (n % p != 0), fewer elements than ranks, and none.
std::vector<size_t> sizes(int p) { return {0, 1, static_cast<size_t>(p) - 1, static_cast<size_t>(p) + 1, 1000, 4099}; }

template <typename T>
void check_all_reduce(Communicator& c) {
  for (size_t n : sizes(c.size())) {
    for (ReduceOp op : {ReduceOp::SUM, ReduceOp::MAX, ReduceOp::MIN}) {
      const auto expect = reference<T>(c.size(), n, op);
      std::vector<T> in = input<T>(c.rank(), n), out(n, T(99));
      c.iall_reduce(host_view(std::as_const(in)), host_view(out), op).wait();
      EXPECT_EQ(out, expect) << "out of place, n " << n << " op " << reduce_op_name(op);
      EXPECT_EQ(in, input<T>(c.rank(), n)) << "the send buffer was modified";
      c.all_reduce(host_view(in), op);
      EXPECT_EQ(in, expect) << "in place, n " << n << " op " << reduce_op_name(op);
    }
  }
}

TEST(MpiCollectives, AllReduceEveryTypeAndOpExactly) {
  check_all_reduce<float>(world());
  check_all_reduce<double>(world());
  check_all_reduce<int32_t>(world());
  check_all_reduce<int64_t>(world());
  check_all_reduce<uint32_t>(world());
  check_all_reduce<uint64_t>(world());
}

TEST(MpiCollectives, FloatSumsAddInRankOrder) {
  // 2^24 + 1 is not a float: the order of the additions decides the result.
  const int p = world().size();
  const auto x = [](int r, size_t i) { return (r + static_cast<int>(i)) % 2 == 0 ? 16777216.0f : 1.0f - 2.0f * static_cast<float>(r % 3); };
  const size_t n = 64;
  std::vector<float> mine(n), expect(n);
  for (size_t i = 0; i < n; ++i) {
    mine[i] = x(world().rank(), i);
    float acc = x(0, i);
    for (int r = 1; r < p; ++r) acc = acc + x(r, i);
    expect[i] = acc;
  }
  world().all_reduce(host_view(mine), ReduceOp::SUM);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(mine[i]), std::bit_cast<uint32_t>(expect[i])) << "element " << i;
  }
}

TEST(MpiCollectives, ReduceScatterGivesEachRankItsBlock) {
  Communicator& c = world();
  for (size_t block : {size_t{0}, size_t{1}, size_t{5}, size_t{333}}) {
    const size_t n = block * static_cast<size_t>(c.size());
    const auto sum = reference<float>(c.size(), n, ReduceOp::SUM);
    const std::vector<float> in = input<float>(c.rank(), n);
    std::vector<float> out(block, -1.0f);
    c.reduce_scatter(host_view(in), host_view(out), ReduceOp::SUM);
    const std::vector<float> expect(sum.begin() + static_cast<ptrdiff_t>(block * static_cast<size_t>(c.rank())),
                                    sum.begin() + static_cast<ptrdiff_t>(block * static_cast<size_t>(c.rank() + 1)));
    EXPECT_EQ(out, expect) << "block " << block;
  }
}

TEST(MpiCollectives, AllGatherConcatenatesInRankOrder) {
  Communicator& c = world();
  for (size_t block : {size_t{0}, size_t{1}, size_t{7}, size_t{1025}}) {
    const auto p = static_cast<size_t>(c.size());
    std::vector<int64_t> expect;
    for (int r = 0; r < c.size(); ++r) {
      const auto x = input<int64_t>(r, block);
      expect.insert(expect.end(), x.begin(), x.end());
    }
    const auto in = input<int64_t>(c.rank(), block);
    std::vector<int64_t> out(block * p, -5);
    c.all_gather(host_view(in), host_view(out));
    EXPECT_EQ(out, expect) << "block " << block;
    // In place: this rank's block already sits in the output.
    std::vector<int64_t> inplace(block * p, -5);
    std::copy(in.begin(), in.end(), inplace.begin() + static_cast<ptrdiff_t>(block * static_cast<size_t>(c.rank())));
    c.all_gather(host_view(inplace).slice(block * static_cast<size_t>(c.rank()), block), host_view(inplace));
    EXPECT_EQ(inplace, expect) << "in place, block " << block;
  }
}

// Rank s sends count(s, d) elements to rank d; zero for some pairs, including a rank to itself.
size_t a2a_count(int s, int d) { return static_cast<size_t>((s * 5 + d * 3) % 4 == 0 ? 0 : (s * 7 + d * 11) % 9 + 1); }
float a2a_value(int s, int d, size_t i) { return static_cast<float>(s * 100000 + d * 1000) + static_cast<float>(i); }

TEST(MpiCollectives, AllToAllVUnevenWithZeroCounts) {
  Communicator& c = world();
  const int p = c.size(), me = c.rank();
  std::vector<size_t> send_counts(static_cast<size_t>(p)), recv_counts(static_cast<size_t>(p));
  std::vector<float> send, expect;
  bool any_zero = false;
  for (int d = 0; d < p; ++d) {
    send_counts[static_cast<size_t>(d)] = a2a_count(me, d);
    for (size_t i = 0; i < a2a_count(me, d); ++i) send.push_back(a2a_value(me, d, i));
  }
  for (int s = 0; s < p; ++s) {
    recv_counts[static_cast<size_t>(s)] = a2a_count(s, me);
    for (size_t i = 0; i < a2a_count(s, me); ++i) expect.push_back(a2a_value(s, me, i));
    for (int d = 0; d < p; ++d) any_zero = any_zero || a2a_count(s, d) == 0;
  }
  ASSERT_TRUE(any_zero) << "the pattern must include zero counts";
  send.push_back(-7.0f);  // buffers may be longer than the counts
  std::vector<float> recv(expect.size() + 1, -1.0f);
  c.all_to_all_v(host_view(send), send_counts, host_view(recv), recv_counts);
  EXPECT_EQ(std::vector<float>(recv.begin(), recv.end() - 1), expect);
  EXPECT_EQ(recv.back(), -1.0f) << "wrote past the counts";

  // Everything empty.
  const std::vector<size_t> zeros(static_cast<size_t>(p), 0);
  std::vector<float> none;
  c.all_to_all_v(host_view(none), zeros, host_view(none), zeros);
}

TEST(MpiCollectives, AllToAllVCountMismatchNamesTheRank) {
  Communicator& c = world();
  const int p = c.size(), me = c.rank();
  // Rank 1 sends rank 0 two elements, but rank 0 expects three; every other pair agrees.
  std::vector<size_t> send_counts(static_cast<size_t>(p), 1), recv_counts(static_cast<size_t>(p), 1);
  if (me == 1) send_counts[0] = 2;
  if (me == 0) recv_counts[1] = 3;
  std::vector<double> send(static_cast<size_t>(p) + 1, 1.0), recv(static_cast<size_t>(p) + 2, 0.0);
  if (me == 0) {
    const std::string msg = test::error_of([&] { c.all_to_all_v(host_view(send), send_counts, host_view(recv), recv_counts); });
    EXPECT_NE(msg.find("rank 1 (world rank 1) sent 2 float64 elements but this rank expected 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank 0/"), std::string::npos) << msg;
  } else {
    c.all_to_all_v(host_view(send), send_counts, host_view(recv), recv_counts);
  }
  c.barrier();
}

TEST(MpiCollectives, BroadcastFromEveryRoot) {
  Communicator& c = world();
  for (int root = 0; root < c.size(); ++root) {
    for (size_t n : {size_t{0}, size_t{3}, size_t{100000}}) {
      std::vector<uint32_t> buf = c.rank() == root ? input<uint32_t>(root, n) : std::vector<uint32_t>(n, 77);
      c.broadcast(host_view(buf), root);
      EXPECT_EQ(buf, input<uint32_t>(root, n)) << "root " << root << " n " << n;
    }
  }
}

TEST(MpiCollectives, NonBlockingSendRecvAroundTheRingOverlapsWork) {
  Communicator& c = world();
  const int p = c.size(), me = c.rank();
  const int next = (me + 1) % p, prev = (me + p - 1) % p;
  for (size_t n : {size_t{1}, size_t{200000}}) {  // eager and rendezvous-sized messages
    const std::vector<float> out = input<float>(me, n);
    std::vector<float> in(n, 0.0f);
    parallel::Request r = c.irecv(host_view(in), prev, 5);
    parallel::Request s = c.isend(host_view(out), next, 5);
    double work = 0;
    int polls = 0;
    while (!(r.test() & s.test())) work += std::sqrt(static_cast<double>(++polls));  // compute while in flight
    EXPECT_TRUE(r.done() && s.done());
    EXPECT_EQ(in, input<float>(prev, n));
  }
}

TEST(MpiCollectives, SeveralCollectivesInFlightCompleteInAnyOrder) {
  Communicator& c = world();
  std::vector<std::vector<float>> bufs;
  for (int k = 0; k < 5; ++k) bufs.push_back(input<float>(c.rank() + k, 300 + static_cast<size_t>(k)));
  std::vector<parallel::Request> reqs;
  for (auto& b : bufs) reqs.push_back(c.iall_reduce(host_view(std::as_const(b)), host_view(b), ReduceOp::SUM));
  for (int k = 4; k >= 0; --k) reqs[static_cast<size_t>(k)].wait();
  for (int k = 0; k < 5; ++k) {
    std::vector<float> expect(300 + static_cast<size_t>(k), 0.0f);
    for (size_t i = 0; i < expect.size(); ++i) {
      float acc = value<float>(k, i);
      for (int r = 1; r < c.size(); ++r) acc = acc + value<float>(r + k, i);
      expect[i] = acc;
    }
    EXPECT_EQ(bufs[static_cast<size_t>(k)], expect) << "collective " << k;
  }
}

TEST(MpiCollectives, SplitMakesGroupsWithWorldRanks) {
  Communicator& w = world();
  auto half = w.split(w.rank() % 2, w.rank(), "parity");
  const int members = (w.size() + (w.rank() % 2 == 0 ? 1 : 0)) / 2;
  EXPECT_EQ(half->size(), members);
  EXPECT_EQ(half->rank(), w.rank() / 2);
  EXPECT_EQ(half->name(), "parity");
  for (int r = 0; r < half->size(); ++r) EXPECT_EQ(half->world_rank(r), 2 * r + w.rank() % 2);
  std::vector<int32_t> x{w.rank()};
  half->all_reduce(host_view(x), ReduceOp::SUM);
  int32_t expect = 0;
  for (int r = w.rank() % 2; r < w.size(); r += 2) expect += r;
  EXPECT_EQ(x[0], expect);
  // Reversed order by key.
  auto reversed = w.split(0, -w.rank(), "reversed");
  EXPECT_EQ(reversed->rank(), w.size() - 1 - w.rank());
  EXPECT_EQ(reversed->world_rank(0), w.size() - 1);
  w.barrier();
}

TEST(MpiCollectives, BadCallsAreRejectedWithTheirReason) {
  Communicator& c = world();
  std::vector<float> f(4);
  std::vector<double> d(4);
  const BufferView gpu{f.data(), ElementType::F32, 4, DeviceId::cuda(0)};
  EXPECT_NE(test::error_of([&] { c.all_reduce(gpu, ReduceOp::SUM); }).find("takes host buffers, not float32 x 4 on cuda:0"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { c.iall_reduce(host_view(f), host_view(d), ReduceOp::SUM); }).find("send is float32 x 4 on host but recv is float64"),
            std::string::npos);
  const BufferView bf16{f.data(), ElementType::BF16, 8, DeviceId::host()};
  EXPECT_NE(test::error_of([&] { c.all_reduce(bf16, ReduceOp::SUM); }).find("reductions of bfloat16 are not supported"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { c.isend(host_view(f), 0, 40000); }).find("tag 40000 is outside [0, 32767]"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { c.isend(host_view(f), c.size(), 1); }).find("destination rank"), std::string::npos);
  std::vector<float> small(3);
  EXPECT_NE(test::error_of([&] { c.all_gather(host_view(f), host_view(small)); }).find("all_gather: recv has 3 elements"),
            std::string::npos);
  const std::vector<size_t> short_counts(1, 0);
  EXPECT_NE(test::error_of([&] { c.all_to_all_v(host_view(f), short_counts, host_view(f), short_counts); }).find("1 send_counts and 1 recv_counts"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { c.iall_reduce(host_view(f).slice(0, 3), host_view(f).slice(1, 3), ReduceOp::SUM); }).find("overlap"),
            std::string::npos);
  c.barrier();
}

TEST(MpiCollectives, ReceiveOfTheWrongSizeNamesTheSender) {
  Communicator& c = world();
  if (c.rank() == 0) {
    std::vector<int32_t> in(5);
    const std::string msg = test::error_of([&] { c.recv(host_view(in), 1, 3); });
    EXPECT_NE(msg.find("rank 1 (world rank 1) sent 4 int32 elements but this rank expected 5"), std::string::npos) << msg;
  } else if (c.rank() == 1) {
    const std::vector<int32_t> out(4, 1);
    c.send(host_view(out), 0, 3);
  }
  c.barrier();
}

}  // namespace
}  // namespace cadtrain
