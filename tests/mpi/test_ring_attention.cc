// Ring attention and TokenRing under mpirun (2, 3 and 4 ranks) against the single-process fused
// task attention on the whole micro-batch: every rank builds the same global problem, takes its
// zigzag (or plain) shard, runs the strategy, and compares its rows of O, LSE, dQ, dK and dV with
// the reference's.
// The document mixes hold a document longer than a rank's share, documents shorter than the
// number of ranks, a document tail starting at position 30, and (tiny mix) ranks with no rows.
// Tolerance: relative 1e-5 per element against max(|ref|, rms(ref)) for O and LSE (the ring merges
// partials where one process runs one online softmax), 1e-4 for the gradients (floor 1e-2, as the
// kernel tests). Also checks the bytes sent per layer against the formulas of ring_attention.h and
// token_ring.h.
#include <gtest/gtest.h>

#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/core_attention.h"
#include "parallel/context_shard.h"
#include "parallel/ring_attention.h"
#include "parallel/token_ring.h"
#include "tests/kernel_test_util.h"
#include "tests/mpi/mpi_test_main.h"

namespace cadtrain {
namespace {

using kernels::AttentionIO;
using kernels::AttentionShape;
using kernels::RowRange;
using kernels::SequenceLayout;
using test::world;

constexpr int64_t kQHeads = 4, kKvHeads = 2, kDim = 16;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Tensors {
  std::vector<float> q, k, v, dout, o, lse, dq, dk, dv;
};

// Rows `rows` of a [N, width] tensor.
std::vector<float> take(const std::vector<float>& x, const std::vector<int64_t>& rows, int64_t width) {
  std::vector<float> out;
  for (const int64_t r : rows) out.insert(out.end(), x.begin() + r * width, x.begin() + (r + 1) * width);
  return out;
}

std::vector<double> take_double(const std::vector<float>& x, const std::vector<int64_t>& rows, int64_t width) {
  const std::vector<float> t = take(x, rows, width);
  return {t.begin(), t.end()};
}

enum class Strategy { RING, TOKENRING };

void check_mix(const std::vector<int32_t>& lengths, bool zigzag, int parts_count, Strategy strategy) {
  parallel::Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  std::vector<int32_t> cu = {0};
  for (const int32_t len : lengths) cu.push_back(cu.back() + len);
  const int64_t n = cu.back(), qd = kQHeads * kDim, kvd = kKvHeads * kDim;
  std::vector<int32_t> first_pos;
  std::vector<uint64_t> docs;
  for (size_t s = 0; s < lengths.size(); ++s) {
    first_pos.push_back(s == 1 ? 30 : 0);  // the second sequence is a document's tail
    docs.push_back(100 + s);
  }
  const SequenceLayout global{cu.data(), static_cast<int64_t>(lengths.size()), first_pos.data(), docs.data()};
  const AttentionShape shape{n, kQHeads, kKvHeads, kDim, 0.25f};

  Tensors g;  // the whole micro-batch, identical on every rank
  g.q = test::randn(static_cast<size_t>(n * qd), 1);
  g.k = test::randn(static_cast<size_t>(n * kvd), 2);
  g.v = test::randn(static_cast<size_t>(n * kvd), 3);
  g.dout = test::randn(static_cast<size_t>(n * qd), 4);
  g.o.assign(g.q.size(), 0.0f);
  g.lse.assign(static_cast<size_t>(n * kQHeads), 0.0f);
  g.dq.assign(g.q.size(), 0.0f);
  g.dk.assign(g.k.size(), 0.0f);
  g.dv.assign(g.k.size(), 0.0f);
  const auto local = kernels::make_local_task_attention();
  kernels::attention_forward_all(*local, g.o.data(), g.lse.data(), g.q.data(), g.k.data(), g.v.data(), shape, global);
  kernels::attention_backward_all(*local, g.dq.data(), g.dk.data(), g.dv.data(), g.dout.data(), g.q.data(),
                                  g.k.data(), g.v.data(), g.o.data(), g.lse.data(), shape, global);

  const parallel::ContextShard shard = parallel::shard_for_context_rank(global, P, r, zigzag);
  const auto m = static_cast<int64_t>(shard.rows.size());
  Tensors t;
  t.q = take(g.q, shard.rows, qd);
  t.k = take(g.k, shard.rows, kvd);
  t.v = take(g.v, shard.rows, kvd);
  t.dout = take(g.dout, shard.rows, qd);
  t.o.assign(static_cast<size_t>(m * qd), kNaN);
  t.lse.assign(static_cast<size_t>(m * kQHeads), kNaN);
  t.dq.assign(static_cast<size_t>(m * qd), kNaN);
  t.dk.assign(static_cast<size_t>(m * kvd), 0.0f);  // accumulated into
  t.dv.assign(static_cast<size_t>(m * kvd), 0.0f);

  std::unique_ptr<kernels::CoreAttention> attention;
  if (strategy == Strategy::RING) {
    attention = std::make_unique<parallel::RingAttention>(comm);
  } else {
    attention = std::make_unique<parallel::TokenRingAttention>(comm);
  }
  kernels::CoreAttention& ring = *attention;
  std::vector<RowRange> parts;
  for (int p = 0; p < parts_count; ++p) parts.push_back({m * p / parts_count, m * (p + 1) / parts_count});
  const AttentionShape local_shape{m, kQHeads, kKvHeads, kDim, 0.25f};
  const int layer = 2;
  const auto plan = ring.prepare(local_shape, shard.layout(), parts);
  const AttentionIO io{t.q.data(), t.k.data(), t.v.data(), t.o.data(), t.lse.data()};
  std::vector<std::unique_ptr<kernels::AttentionHandle>> fwd;
  for (size_t p = 0; p < parts.size(); ++p) fwd.push_back(ring.forward(layer, *plan, p, io));
  for (auto& h : fwd) h->wait();
  std::vector<std::unique_ptr<kernels::AttentionHandle>> bwd;
  for (size_t p = parts.size(); p-- > 0;) {
    bwd.push_back(ring.backward(layer, *plan, p, *fwd[p], io, {t.dout.data(), t.dq.data(), t.dk.data(), t.dv.data()}));
  }
  for (auto& h : bwd) h->wait();

  const std::string what = std::string(strategy == Strategy::RING ? "ring" : "TokenRing") + " rank " + std::to_string(r) + "/" + std::to_string(P) + (zigzag ? " zigzag " : " plain ") +
                           std::to_string(parts_count) + " parts: ";
  test::expect_close(t.o, take_double(g.o, shard.rows, qd), 1e-5, what + "O");
  test::expect_close(t.lse, take_double(g.lse, shard.rows, kQHeads), 1e-5, what + "LSE");
  test::expect_close(t.dq, take_double(g.dq, shard.rows, qd), 1e-4, what + "dQ", 1e-2);
  test::expect_close(t.dk, take_double(g.dk, shard.rows, kvd), 1e-4, what + "dK", 1e-2);
  test::expect_close(t.dv, take_double(g.dv, shard.rows, kvd), 1e-4, what + "dV", 1e-2);

  // Bytes sent (ring_attention.h, token_ring.h).
  std::vector<int64_t> rows_of(static_cast<size_t>(P));
  for (int j = 0; j < P; ++j) {
    rows_of[static_cast<size_t>(j)] =
        static_cast<int64_t>(parallel::shard_for_context_rank(global, P, j, zigzag).rows.size());
  }
  const auto rows = [&](int j) { return static_cast<uint64_t>(rows_of[static_cast<size_t>((j % P + P) % P)]); };
  uint64_t fwd_bytes = 0, bwd_bytes = 0;
  if (strategy == Strategy::RING) {
    for (int s = 0; s + 1 < P; ++s) fwd_bytes += rows(r - s) * 2 * kvd * 4;
    bwd_bytes = fwd_bytes + static_cast<uint64_t>(2 * n * kvd * 4);
    EXPECT_EQ(static_cast<parallel::RingAttention&>(ring).traffic(layer).forward_bytes, fwd_bytes) << what;
    EXPECT_EQ(static_cast<parallel::RingAttention&>(ring).traffic(layer).backward_bytes, bwd_bytes) << what;
  } else {
    for (int s = 0; s + 1 < P; ++s) {
      fwd_bytes += rows(r + s) * qd * 4;
      bwd_bytes += rows(r + s) * (3 * qd + kQHeads) * 4;
    }
    for (int s = 1; s < P; ++s) {
      fwd_bytes += rows(r + s) * (qd + kQHeads) * 4;
      bwd_bytes += rows(r + s) * qd * 4;
    }
    EXPECT_EQ(static_cast<parallel::TokenRingAttention&>(ring).traffic(layer).forward_bytes, fwd_bytes) << what;
    EXPECT_EQ(static_cast<parallel::TokenRingAttention&>(ring).traffic(layer).backward_bytes, bwd_bytes) << what;
  }
}

const std::vector<int32_t> kMix = {150, 40, 1, 3, 2, 77};  // 150 > a rank's share at every P here

TEST(RingAttention, ZigzagMatchesOneProcess) { check_mix(kMix, true, 1, Strategy::RING); }
TEST(RingAttention, PlainSplitMatchesOneProcess) { check_mix(kMix, false, 1, Strategy::RING); }
TEST(RingAttention, NanoBatchPartsMatchOneProcess) { check_mix(kMix, true, 2, Strategy::RING); }
TEST(TokenRing, ZigzagMatchesOneProcess) { check_mix(kMix, true, 1, Strategy::TOKENRING); }
TEST(TokenRing, PlainSplitMatchesOneProcess) { check_mix(kMix, false, 1, Strategy::TOKENRING); }
TEST(TokenRing, NanoBatchPartsMatchOneProcess) { check_mix(kMix, true, 2, Strategy::TOKENRING); }
TEST(RingAttention, TinyDocumentsLeaveRanksEmpty) {
  check_mix({1, 2, 1}, true, 1, Strategy::RING);
  check_mix({1, 2, 1}, true, 1, Strategy::TOKENRING);
  const std::vector<int32_t> cu = {0, 1, 3, 4};
  const SequenceLayout tiny{cu.data(), 3, nullptr, nullptr};
  if (world().size() >= 3) {
    size_t empty = 0;
    for (int j = 0; j < world().size(); ++j) empty += parallel::shard_for_context_rank(tiny, world().size(), j, true).rows.empty();
    EXPECT_GT(empty, 0u) << "the tiny mix should leave some rank without rows";
  }
}

TEST(ContextShard, ShardsPartitionTheRowsWithTruePositions) {
  const std::vector<int32_t> cu = {0, 10, 11, 30};
  const std::vector<int32_t> pos = {0, 4, 100};
  const SequenceLayout global{cu.data(), 3, pos.data(), nullptr};
  for (const bool zigzag : {true, false}) {
    std::vector<int> owner(30, -1);
    for (int j = 0; j < 3; ++j) {
      const parallel::ContextShard s = parallel::shard_for_context_rank(global, 3, j, zigzag);
      for (size_t i = 0; i < s.rows.size(); ++i) {
        EXPECT_EQ(owner[static_cast<size_t>(s.rows[i])], -1) << "row " << s.rows[i] << " held twice";
        owner[static_cast<size_t>(s.rows[i])] = j;
        if (i > 0) {
          EXPECT_LT(s.rows[i - 1], s.rows[i]);
        }
      }
      for (size_t q = 0; q + 1 < s.cu_seqlens.size(); ++q) {
        const int64_t g0 = s.rows[static_cast<size_t>(s.cu_seqlens[q])];
        const int64_t seq = g0 < 10 ? 0 : g0 < 11 ? 1 : 2;
        EXPECT_EQ(s.doc_ids[q], static_cast<uint64_t>(seq));
        EXPECT_EQ(s.first_pos[q], pos[static_cast<size_t>(seq)] + (g0 - cu[static_cast<size_t>(seq)]));
      }
    }
    for (int i = 0; i < 30; ++i) EXPECT_NE(owner[static_cast<size_t>(i)], -1) << "row " << i << " held by no rank";
  }
  // Zigzag: rank 0 of 3 holds chunk 0 of every sequence (row 0 first) and chunk 5 (the last rows).
  const parallel::ContextShard s0 = parallel::shard_for_context_rank(global, 3, 0, true);
  EXPECT_EQ(s0.rows.front(), 0);
  EXPECT_EQ(s0.rows.back(), 29);
}

}  // namespace
}  // namespace cadtrain
