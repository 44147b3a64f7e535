// Ring attention (see ring_attention.h).
#include "parallel/ring_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "kernels/attention_tasks.h"
#include "parallel/cp_layout.h"

namespace cadtrain::parallel {
namespace {

constexpr int kTagK = 7101, kTagV = 7102, kTagDK = 7103, kTagDV = 7104;

struct RingPlan final : kernels::AttentionPlan {
  kernels::AttentionShape shape;
  std::vector<kernels::RowRange> parts;
  int ranks = 1, rank = 0;
  std::vector<int64_t> rows_of;  // [rank] rows each rank holds
  // steps[s]: the tasks of this rank's queries against the rows of rank (rank - s) mod P, in
  // rounds whose tasks share no query rows (the forward kernel's rule).
  std::vector<std::vector<std::vector<kernels::AttentionTask>>> steps;
  std::vector<bool> forward_done;  // [layer]
  std::vector<bool> backward_done;
};

RingPlan& ring_plan(kernels::AttentionPlan& plan, size_t part, const char* op) {
  auto* p = dynamic_cast<RingPlan*>(&plan);
  CADTRAIN_CHECK(p != nullptr, "{}: the plan was prepared by another attention strategy", op);
  CADTRAIN_CHECK(part < p->parts.size(), "{}: part {} of a plan with {} parts", op, part, p->parts.size());
  return *p;
}

}  // namespace

RingAttention::RingAttention(Communicator& group) : group_(group) {
  CADTRAIN_CHECK(group.memory() == DeviceId::Kind::HOST, "ring attention: the {} communicator is not for host memory",
                 group.name());
}

RingAttention::~RingAttention() = default;

RingTraffic RingAttention::traffic(int layer) const {
  const auto l = static_cast<size_t>(layer);
  return l < traffic_.size() ? traffic_[l] : RingTraffic{};
}

std::unique_ptr<kernels::AttentionPlan> RingAttention::prepare(const kernels::AttentionShape& shape,
                                                               const kernels::SequenceLayout& layout,
                                                               std::span<const kernels::RowRange> parts) {
  const char* op = "ring attention prepare";
  const int64_t n = kernels::check_layout(layout, op);
  CADTRAIN_CHECK(n == shape.n, "{}: the sequences cover {} rows but n = {} (rank {} of {})", op, n, shape.n,
                 group_.rank(), group_.name());
  CADTRAIN_CHECK(!parts.empty() && parts.front().begin == 0 && parts.back().end == n,
                 "{}: the parts must cover the rank's {} rows", op, n);
  auto plan = std::make_unique<RingPlan>();
  plan->shape = shape;
  plan->parts.assign(parts.begin(), parts.end());
  plan->ranks = group_.size();
  plan->rank = group_.rank();
  const int P = plan->ranks;
  const CpLayouts all = gather_cp_layouts(group_, layout, op);
  plan->rows_of = all.rows;
  for (int s = 0; s < P; ++s) {
    const int src = ((plan->rank - s) % P + P) % P;
    plan->steps.push_back(cp_pair_tasks(all.seqs[static_cast<size_t>(plan->rank)], all.seqs[static_cast<size_t>(src)]));
  }
  return plan;
}

std::unique_ptr<kernels::AttentionHandle> RingAttention::forward(int layer, kernels::AttentionPlan& plan_base,
                                                                 size_t part, const kernels::AttentionIO& io) {
  RingPlan& plan = ring_plan(plan_base, part, "ring attention forward");
  auto handle = std::make_unique<CpPartHandle>(&plan.forward_done, layer, part, "ring attention forward");
  if (part + 1 != plan.parts.size()) return handle;  // the ring runs at the last part
  const kernels::AttentionShape& sh = plan.shape;
  const int P = plan.ranks, r = plan.rank;
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  const int64_t n = sh.n, kvd = sh.kv_heads * sh.head_dim, qd = sh.q_heads * sh.head_dim;
  const kernels::AttentionDims dims{sh.q_heads, sh.kv_heads, sh.head_dim, sh.softmax_scale};
  const int64_t max_rows = *std::max_element(plan.rows_of.begin(), plan.rows_of.end());
  std::vector<float> kbuf[2], vbuf[2];
  for (int b = 0; b < 2; ++b) {
    kbuf[b].resize(static_cast<size_t>(max_rows * kvd));
    vbuf[b].resize(static_cast<size_t>(max_rows * kvd));
  }
  std::vector<float> part_o(static_cast<size_t>(n * qd)), part_lse(static_cast<size_t>(n * sh.q_heads));
  std::fill(io.o, io.o + n * qd, 0.0f);
  std::fill(io.lse, io.lse + n * sh.q_heads, -INFINITY);
  if (traffic_.size() <= static_cast<size_t>(layer)) traffic_.resize(static_cast<size_t>(layer) + 1);
  RingTraffic& traffic = traffic_[static_cast<size_t>(layer)];
  traffic.forward_bytes = 0;
  ScopedOpContext context(group_.watchdog(), OpContext{-1, layer, "ring attention forward"});
  const float* cur_k = io.k;
  const float* cur_v = io.v;
  for (int s = 0; s < P; ++s) {
    const int64_t cur_rows = plan.rows_of[static_cast<size_t>(((r - s) % P + P) % P)];
    std::vector<Request> reqs;
    if (s + 1 < P) {  // pass the current block on while computing with it
      const int64_t next_rows = plan.rows_of[static_cast<size_t>(((r - s - 1) % P + P) % P)];
      float* nk = kbuf[(s + 1) % 2].data();
      float* nv = vbuf[(s + 1) % 2].data();
      reqs.push_back(group_.irecv(f32_view(nk, next_rows * kvd), prev, kTagK));
      reqs.push_back(group_.irecv(f32_view(nv, next_rows * kvd), prev, kTagV));
      reqs.push_back(group_.isend(f32_view(cur_k, cur_rows * kvd), next, kTagK));
      reqs.push_back(group_.isend(f32_view(cur_v, cur_rows * kvd), next, kTagV));
      traffic.forward_bytes += static_cast<uint64_t>(2 * cur_rows * kvd) * sizeof(float);
    }
    for (const auto& round : plan.steps[static_cast<size_t>(s)]) {
      std::fill(part_o.begin(), part_o.end(), 0.0f);
      std::fill(part_lse.begin(), part_lse.end(), -INFINITY);
      kernels::attention_forward_tasks(part_o.data(), part_lse.data(), io.q, cur_k, cur_v, round, dims);
      kernels::merge_attention_partials(io.o, io.lse, part_o.data(), part_lse.data(), n, sh.q_heads, sh.head_dim);
    }
    wait_all(reqs);
    cur_k = kbuf[(s + 1) % 2].data();
    cur_v = vbuf[(s + 1) % 2].data();
  }
  mark_layer_done(plan.forward_done, layer);
  return handle;
}

std::unique_ptr<kernels::AttentionHandle> RingAttention::backward(int layer, kernels::AttentionPlan& plan_base,
                                                                  size_t part, kernels::AttentionHandle& /*forward*/,
                                                                  const kernels::AttentionIO& io,
                                                                  const kernels::AttentionGrads& grads) {
  RingPlan& plan = ring_plan(plan_base, part, "ring attention backward");
  auto handle = std::make_unique<CpPartHandle>(&plan.backward_done, layer, part, "ring attention backward");
  if (part != 0) return handle;  // the ring runs at part 0, the last the model calls
  const kernels::AttentionShape& sh = plan.shape;
  const int P = plan.ranks, r = plan.rank;
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  const int64_t n = sh.n, kvd = sh.kv_heads * sh.head_dim, qd = sh.q_heads * sh.head_dim;
  const kernels::AttentionDims dims{sh.q_heads, sh.kv_heads, sh.head_dim, sh.softmax_scale};
  const int64_t max_rows = *std::max_element(plan.rows_of.begin(), plan.rows_of.end());
  const auto block = static_cast<size_t>(max_rows * kvd);
  std::vector<float> kbuf[2], vbuf[2], dkbuf[2], dvbuf[2];
  for (int b = 0; b < 2; ++b) {
    kbuf[b].resize(block);
    vbuf[b].resize(block);
    dkbuf[b].assign(block, 0.0f);
    dvbuf[b].assign(block, 0.0f);
  }
  std::vector<float> part_dq(static_cast<size_t>(n * qd));
  std::fill(grads.dq, grads.dq + n * qd, 0.0f);
  if (traffic_.size() <= static_cast<size_t>(layer)) traffic_.resize(static_cast<size_t>(layer) + 1);
  RingTraffic& traffic = traffic_[static_cast<size_t>(layer)];
  traffic.backward_bytes = 0;
  ScopedOpContext context(group_.watchdog(), OpContext{-1, layer, "ring attention backward"});
  const float* cur_k = io.k;
  const float* cur_v = io.v;
  for (int s = 0; s < P; ++s) {
    const int64_t cur_rows = plan.rows_of[static_cast<size_t>(((r - s) % P + P) % P)];
    const int64_t next_rows = plan.rows_of[static_cast<size_t>(((r - s - 1) % P + P) % P)];
    float* dk_cur = dkbuf[s % 2].data();  // the accumulators of the block held now
    float* dv_cur = dvbuf[s % 2].data();
    std::vector<Request> reqs;
    if (s + 1 < P) {
      reqs.push_back(group_.irecv(f32_view(kbuf[(s + 1) % 2].data(), next_rows * kvd), prev, kTagK));
      reqs.push_back(group_.irecv(f32_view(vbuf[(s + 1) % 2].data(), next_rows * kvd), prev, kTagV));
      reqs.push_back(group_.isend(f32_view(cur_k, cur_rows * kvd), next, kTagK));
      reqs.push_back(group_.isend(f32_view(cur_v, cur_rows * kvd), next, kTagV));
      traffic.backward_bytes += static_cast<uint64_t>(2 * cur_rows * kvd) * sizeof(float);
    }
    for (const auto& round : plan.steps[static_cast<size_t>(s)]) {
      std::fill(part_dq.begin(), part_dq.end(), 0.0f);
      kernels::attention_backward_tasks(part_dq.data(), dk_cur, dv_cur, grads.dout, io.q, cur_k, cur_v, io.o, io.lse,
                                        round, dims);
      for (int64_t i = 0; i < n * qd; ++i) grads.dq[i] += part_dq[static_cast<size_t>(i)];
    }
    wait_all(reqs);
    reqs.clear();
    // The accumulators follow their block to rank+1; after the last step they reach home.
    float* dk_next = dkbuf[(s + 1) % 2].data();
    float* dv_next = dvbuf[(s + 1) % 2].data();
    const int64_t incoming = s + 1 < P ? next_rows : n;  // after the last step: this rank's own block
    reqs.push_back(group_.irecv(f32_view(dk_next, incoming * kvd), prev, kTagDK));
    reqs.push_back(group_.irecv(f32_view(dv_next, incoming * kvd), prev, kTagDV));
    reqs.push_back(group_.isend(f32_view(static_cast<const float*>(dk_cur), cur_rows * kvd), next, kTagDK));
    reqs.push_back(group_.isend(f32_view(static_cast<const float*>(dv_cur), cur_rows * kvd), next, kTagDV));
    traffic.backward_bytes += static_cast<uint64_t>(2 * cur_rows * kvd) * sizeof(float);
    wait_all(reqs);
    std::fill(dk_cur, dk_cur + cur_rows * kvd, 0.0f);  // reused for the block after next
    std::fill(dv_cur, dv_cur + cur_rows * kvd, 0.0f);
    cur_k = kbuf[(s + 1) % 2].data();
    cur_v = vbuf[(s + 1) % 2].data();
  }
  // This rank's own accumulators arrived in buffer P % 2.
  const float* dk_home = dkbuf[P % 2].data();
  const float* dv_home = dvbuf[P % 2].data();
  for (int64_t i = 0; i < n * kvd; ++i) {
    grads.dk[i] += dk_home[i];
    grads.dv[i] += dv_home[i];
  }
  mark_layer_done(plan.backward_done, layer);
  return handle;
}

}  // namespace cadtrain::parallel
