// TokenRing (see token_ring.h).
#include "parallel/token_ring.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/error.h"
#include "kernels/attention_tasks.h"
#include "parallel/cp_layout.h"

namespace cadtrain::parallel {
namespace {

constexpr int kTagQ = 7201, kTagDO = 7202, kTagO = 7203, kTagLse = 7204, kTagPartO = 7205, kTagPartLse = 7206,
              kTagPartDQ = 7207;

struct TokenRingPlan final : kernels::AttentionPlan {
  kernels::AttentionShape shape;
  std::vector<kernels::RowRange> parts;
  int ranks = 1, rank = 0;
  std::vector<int64_t> rows_of;  // [rank]
  // steps[s]: the tasks of the queries of rank (rank + s) mod P (rows of its block) against this
  // rank's keys, in rounds of distinct query rows.
  std::vector<std::vector<std::vector<kernels::AttentionTask>>> steps;
  std::vector<bool> forward_done;
  std::vector<bool> backward_done;
  int owner(int s) const { return (rank + s) % ranks; }
  int64_t rows(int s) const { return rows_of[static_cast<size_t>(owner(s))]; }
};

TokenRingPlan& token_ring_plan(kernels::AttentionPlan& plan, size_t part, const char* op) {
  auto* p = dynamic_cast<TokenRingPlan*>(&plan);
  CADTRAIN_CHECK(p != nullptr, "{}: the plan was prepared by another attention strategy", op);
  CADTRAIN_CHECK(part < p->parts.size(), "{}: part {} of a plan with {} parts", op, part, p->parts.size());
  return *p;
}

RingTraffic& traffic_of(std::vector<RingTraffic>& traffic, int layer) {
  if (traffic.size() <= static_cast<size_t>(layer)) traffic.resize(static_cast<size_t>(layer) + 1);
  return traffic[static_cast<size_t>(layer)];
}

}  // namespace

TokenRingAttention::TokenRingAttention(Communicator& group) : group_(group) {
  CADTRAIN_CHECK(group.memory() == DeviceId::Kind::HOST, "TokenRing: the {} communicator is not for host memory",
                 group.name());
}

TokenRingAttention::~TokenRingAttention() = default;

RingTraffic TokenRingAttention::traffic(int layer) const {
  const auto l = static_cast<size_t>(layer);
  return l < traffic_.size() ? traffic_[l] : RingTraffic{};
}

std::unique_ptr<kernels::AttentionPlan> TokenRingAttention::prepare(const kernels::AttentionShape& shape,
                                                                    const kernels::SequenceLayout& layout,
                                                                    std::span<const kernels::RowRange> parts) {
  const char* op = "TokenRing prepare";
  const int64_t n = kernels::check_layout(layout, op);
  CADTRAIN_CHECK(n == shape.n, "{}: the sequences cover {} rows but n = {} (rank {} of {})", op, n, shape.n,
                 group_.rank(), group_.name());
  CADTRAIN_CHECK(!parts.empty() && parts.front().begin == 0 && parts.back().end == n,
                 "{}: the parts must cover the rank's {} rows", op, n);
  auto plan = std::make_unique<TokenRingPlan>();
  plan->shape = shape;
  plan->parts.assign(parts.begin(), parts.end());
  plan->ranks = group_.size();
  plan->rank = group_.rank();
  const CpLayouts all = gather_cp_layouts(group_, layout, op);
  plan->rows_of = all.rows;
  for (int s = 0; s < plan->ranks; ++s) {
    plan->steps.push_back(cp_pair_tasks(all.seqs[static_cast<size_t>(plan->owner(s))],
                                        all.seqs[static_cast<size_t>(plan->rank)]));
  }
  return plan;
}

std::unique_ptr<kernels::AttentionHandle> TokenRingAttention::forward(int layer, kernels::AttentionPlan& plan_base,
                                                                      size_t part, const kernels::AttentionIO& io) {
  TokenRingPlan& plan = token_ring_plan(plan_base, part, "TokenRing forward");
  auto handle = std::make_unique<CpPartHandle>(&plan.forward_done, layer, part, "TokenRing forward");
  if (part + 1 != plan.parts.size()) return handle;  // every part runs at the last part's forward
  const kernels::AttentionShape& sh = plan.shape;
  const int P = plan.ranks, r = plan.rank;
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  const int64_t n = sh.n, hq = sh.q_heads, qd = sh.q_heads * sh.head_dim;
  const kernels::AttentionDims dims{sh.q_heads, sh.kv_heads, sh.head_dim, sh.softmax_scale};
  const int64_t max_rows = *std::max_element(plan.rows_of.begin(), plan.rows_of.end());
  std::vector<float> qbuf[2];
  for (auto& b : qbuf) b.resize(static_cast<size_t>(max_rows * qd));
  // The partial of the block held now, a scratch round, and the partial arriving for this rank.
  std::vector<float> po(static_cast<size_t>(max_rows * qd)), pl(static_cast<size_t>(max_rows * hq));
  std::vector<float> to(po.size()), tl(pl.size()), ro(static_cast<size_t>(n * qd)), rl(static_cast<size_t>(n * hq));
  RingTraffic& traffic = traffic_of(traffic_, layer);
  traffic.forward_bytes = 0;
  ScopedOpContext context(group_.watchdog(), OpContext{-1, layer, "TokenRing forward"});
  const float* qcur = io.q;
  for (int s = 0; s < P; ++s) {
    const int64_t m = plan.rows(s);
    std::vector<Request> qreqs;
    if (s + 1 < P) {  // queries travel to rank-1 while this block is computed
      qreqs.push_back(group_.irecv(f32_view(qbuf[(s + 1) % 2].data(), plan.rows(s + 1) * qd), next, kTagQ));
      qreqs.push_back(group_.isend(f32_view(qcur, m * qd), prev, kTagQ));
      traffic.forward_bytes += static_cast<uint64_t>(m * qd) * sizeof(float);
    }
    // Partial (O, LSE) of the block's queries against this rank's keys: rows no task covers stay
    // O = 0, LSE = -inf; later rounds (split keys) merge in.
    float* out_o = s == 0 ? io.o : po.data();
    float* out_l = s == 0 ? io.lse : pl.data();
    std::fill(out_o, out_o + m * qd, 0.0f);
    std::fill(out_l, out_l + m * hq, -INFINITY);
    const auto& rounds = plan.steps[static_cast<size_t>(s)];
    for (size_t rd = 0; rd < rounds.size(); ++rd) {
      if (rd == 0) {
        kernels::attention_forward_tasks(out_o, out_l, qcur, io.k, io.v, rounds[rd], dims);
        continue;
      }
      std::fill(to.begin(), to.begin() + m * qd, 0.0f);
      std::fill(tl.begin(), tl.begin() + m * hq, -INFINITY);
      kernels::attention_forward_tasks(to.data(), tl.data(), qcur, io.k, io.v, rounds[rd], dims);
      kernels::merge_attention_partials(out_o, out_l, to.data(), tl.data(), m, hq, sh.head_dim);
    }
    if (s > 0) {  // results straight back to their owner; this rank's own from rank r-s
      const int src = ((r - s) % P + P) % P;
      std::vector<Request> preqs;
      preqs.push_back(group_.irecv(f32_view(ro.data(), n * qd), src, kTagPartO));
      preqs.push_back(group_.irecv(f32_view(rl.data(), n * hq), src, kTagPartLse));
      preqs.push_back(group_.isend(f32_view(static_cast<const float*>(po.data()), m * qd), plan.owner(s), kTagPartO));
      preqs.push_back(group_.isend(f32_view(static_cast<const float*>(pl.data()), m * hq), plan.owner(s), kTagPartLse));
      traffic.forward_bytes += static_cast<uint64_t>(m * (qd + hq)) * sizeof(float);
      wait_all(preqs);
      kernels::merge_attention_partials(io.o, io.lse, ro.data(), rl.data(), n, hq, sh.head_dim);
    }
    wait_all(qreqs);
    qcur = qbuf[(s + 1) % 2].data();
  }
  mark_layer_done(plan.forward_done, layer);
  return handle;
}

std::unique_ptr<kernels::AttentionHandle> TokenRingAttention::backward(int layer, kernels::AttentionPlan& plan_base,
                                                                       size_t part, kernels::AttentionHandle& /*fwd*/,
                                                                       const kernels::AttentionIO& io,
                                                                       const kernels::AttentionGrads& grads) {
  TokenRingPlan& plan = token_ring_plan(plan_base, part, "TokenRing backward");
  auto handle = std::make_unique<CpPartHandle>(&plan.backward_done, layer, part, "TokenRing backward");
  if (part != 0) return handle;  // every part runs at part 0's backward, the last the model calls
  const kernels::AttentionShape& sh = plan.shape;
  const int P = plan.ranks, r = plan.rank;
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  const int64_t n = sh.n, hq = sh.q_heads, qd = sh.q_heads * sh.head_dim;
  const kernels::AttentionDims dims{sh.q_heads, sh.kv_heads, sh.head_dim, sh.softmax_scale};
  const int64_t max_rows = *std::max_element(plan.rows_of.begin(), plan.rows_of.end());
  // The travelling block: Q, dO, O ([rows, qd] each) and LSE ([rows, hq]), double-buffered.
  std::vector<float> tq[2], tdo[2], to[2], tl[2];
  for (int b = 0; b < 2; ++b) {
    tq[b].resize(static_cast<size_t>(max_rows * qd));
    tdo[b].resize(tq[b].size());
    to[b].resize(tq[b].size());
    tl[b].resize(static_cast<size_t>(max_rows * hq));
  }
  std::vector<float> pdq(static_cast<size_t>(max_rows * qd)), rdq(static_cast<size_t>(n * qd));
  RingTraffic& traffic = traffic_of(traffic_, layer);
  traffic.backward_bytes = 0;
  ScopedOpContext context(group_.watchdog(), OpContext{-1, layer, "TokenRing backward"});
  const float *cq = io.q, *cdo = grads.dout, *co = io.o, *cl = io.lse;
  for (int s = 0; s < P; ++s) {
    const int64_t m = plan.rows(s);
    std::vector<Request> treqs;
    if (s + 1 < P) {
      const int b = (s + 1) % 2;
      const int64_t mn = plan.rows(s + 1);
      treqs.push_back(group_.irecv(f32_view(tq[b].data(), mn * qd), next, kTagQ));
      treqs.push_back(group_.irecv(f32_view(tdo[b].data(), mn * qd), next, kTagDO));
      treqs.push_back(group_.irecv(f32_view(to[b].data(), mn * qd), next, kTagO));
      treqs.push_back(group_.irecv(f32_view(tl[b].data(), mn * hq), next, kTagLse));
      treqs.push_back(group_.isend(f32_view(cq, m * qd), prev, kTagQ));
      treqs.push_back(group_.isend(f32_view(cdo, m * qd), prev, kTagDO));
      treqs.push_back(group_.isend(f32_view(co, m * qd), prev, kTagO));
      treqs.push_back(group_.isend(f32_view(cl, m * hq), prev, kTagLse));
      traffic.backward_bytes += static_cast<uint64_t>(m * (3 * qd + hq)) * sizeof(float);
    }
    // The block's dQ from this rank's keys (one call: the backward sums split keys), and its
    // share of dK, dV straight into this rank's gradients.
    std::vector<kernels::AttentionTask> tasks;
    for (const auto& round : plan.steps[static_cast<size_t>(s)]) tasks.insert(tasks.end(), round.begin(), round.end());
    float* out_dq = s == 0 ? grads.dq : pdq.data();
    std::fill(out_dq, out_dq + m * qd, 0.0f);
    kernels::attention_backward_tasks(out_dq, grads.dk, grads.dv, cdo, cq, io.k, io.v, co, cl, tasks, dims);
    if (s > 0) {
      const int src = ((r - s) % P + P) % P;
      std::vector<Request> dreqs;
      dreqs.push_back(group_.irecv(f32_view(rdq.data(), n * qd), src, kTagPartDQ));
      dreqs.push_back(group_.isend(f32_view(static_cast<const float*>(pdq.data()), m * qd), plan.owner(s), kTagPartDQ));
      traffic.backward_bytes += static_cast<uint64_t>(m * qd) * sizeof(float);
      wait_all(dreqs);
      for (int64_t i = 0; i < n * qd; ++i) grads.dq[i] += rdq[static_cast<size_t>(i)];
    }
    wait_all(treqs);
    const int b = (s + 1) % 2;
    cq = tq[b].data();
    cdo = tdo[b].data();
    co = to[b].data();
    cl = tl[b].data();
  }
  mark_layer_done(plan.backward_done, layer);
  return handle;
}

}  // namespace cadtrain::parallel
