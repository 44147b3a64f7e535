// One CAD group's dispatch, server kernels and return (see cad_exchange.h).
#include "attention_servers/cad_exchange.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>

#include "common/error.h"
#include "kernels/attention_tasks.h"

namespace cadtrain::attention_servers {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Widths {
  int64_t qd = 0, kvd = 0, hq = 0;
};

bool is_query(const WireSegment& s) { return s.kind == static_cast<uint64_t>(Dispatch::QUERY); }

// Floats per row of a segment in each phase (cad_exchange.h, payload table).
int64_t floats_per_row(const WireSegment& s, WirePhase phase, const Widths& w, bool resend) {
  const bool q = is_query(s);
  switch (phase) {
    case WirePhase::FORWARD_IN: return q ? w.qd : 2 * w.kvd;
    case WirePhase::FORWARD_OUT: return q ? w.qd + w.hq : 0;
    case WirePhase::BACKWARD_IN: return q ? (resend ? 3 * w.qd + w.hq : w.qd) : (resend ? 2 * w.kvd : 0);
    case WirePhase::BACKWARD_OUT: return q ? w.qd : 2 * w.kvd;
  }
  return 0;
}

uint64_t payload_floats(std::span<const WireSegment> segs, WirePhase phase, const Widths& w, bool resend) {
  uint64_t n = 0;
  for (const WireSegment& s : segs) n += static_cast<uint64_t>(s.rows * floats_per_row(s, phase, w, resend));
  return n;
}

// Messages to every rank of the world, packed in rank order (what all-to-all-v sends), or the
// messages received from every rank.
struct Mailbox {
  std::vector<uint64_t> words;
  std::vector<float> floats;
  std::vector<size_t> word_counts, float_counts;
  explicit Mailbox(int ranks) : word_counts(static_cast<size_t>(ranks), 0), float_counts(static_cast<size_t>(ranks), 0) {}

  // Where rank r's message starts (prefix sums; valid once every count is set).
  size_t word_offset(int r) const { return prefix(word_counts, r); }
  size_t float_offset(int r) const { return prefix(float_counts, r); }
  void allocate() {
    words.resize(prefix(word_counts, static_cast<int>(word_counts.size())));
    floats.resize(prefix(float_counts, static_cast<int>(float_counts.size())));
  }
  static size_t prefix(const std::vector<size_t>& c, int r) {
    size_t n = 0;
    for (int i = 0; i < r; ++i) n += c[static_cast<size_t>(i)];
    return n;
  }
};

void append_rows(std::vector<float>& out, const float* base, int64_t row0, int64_t rows, int64_t width) {
  out.insert(out.end(), base + row0 * width, base + (row0 + rows) * width);
}

// Reads rows from a received message, never past its end (the descriptor check fixed its length).
class Reader {
 public:
  Reader(const float* p, size_t n) : p_(p), left_(n) {}
  const float* take(int64_t count) {
    CADTRAIN_CHECK(count >= 0 && static_cast<size_t>(count) <= left_, "CAD payload: {} floats read, {} left", count,
                   left_);
    const float* at = p_;
    p_ += count;
    left_ -= static_cast<size_t>(count);
    return at;
  }
  void copy_rows(float* dst, int64_t row0, int64_t rows, int64_t width) {
    const float* src = take(rows * width);
    std::memcpy(dst + row0 * width, src, static_cast<size_t>(rows * width) * sizeof(float));
  }

 private:
  const float* p_;
  size_t left_;
};

std::vector<kernels::AttentionTask> server_tasks(const ServerPlan& sp) {
  std::vector<kernels::AttentionTask> tasks;
  tasks.reserve(static_cast<size_t>(sp.tasks_size()));
  for (const ServerTask& t : sp.tasks()) tasks.push_back({t.q0(), t.q1(), t.k0(), t.k1(), t.q_pos0(), t.k_pos0(), true});
  return tasks;
}

}  // namespace

CadLayerTraffic& CadExchange::layer_traffic(int layer) {
  const auto l = static_cast<size_t>(layer);
  if (traffic_.size() <= l) traffic_.resize(l + 1);
  return traffic_[l];
}

CadLayerTraffic CadExchange::traffic(int layer) const {
  const auto l = static_cast<size_t>(layer);
  return l < traffic_.size() ? traffic_[l] : CadLayerTraffic{};
}

void CadExchange::drop_kept() {
  kept_.clear();
  stats_.kept_bytes = 0;
}

namespace {

// Runs one all-to-all-v round: `out` goes, `in` (counts set) comes back; counts bytes and time.
void exchange(parallel::Communicator& world, Mailbox& out, Mailbox& in, CadStats& stats, uint64_t& layer_bytes,
              bool forward, const std::string& what, int layer) {
  parallel::ScopedOpContext context(world.watchdog(), parallel::OpContext{-1, layer, what});
  in.allocate();
  const auto t0 = Clock::now();
  std::vector<parallel::Request> reqs;
  reqs.push_back(world.iall_to_all_v(host_view(std::as_const(out.words)), out.word_counts, host_view(in.words),
                                     in.word_counts));
  reqs.push_back(world.iall_to_all_v(host_view(std::as_const(out.floats)), out.float_counts, host_view(in.floats),
                                     in.float_counts));
  parallel::wait_all(reqs);
  stats.exchange_s += since(t0);
  const int me = world.rank();
  for (int r = 0; r < world.size(); ++r) {
    if (r == me) continue;
    const auto i = static_cast<size_t>(r);
    const uint64_t sent = 4 * out.float_counts[i];
    stats.bytes_sent += sent;
    layer_bytes += sent;
    (forward ? stats.forward_bytes_sent : stats.backward_bytes_sent) += sent;
    stats.bytes_received += 4 * in.float_counts[i];
    stats.descriptor_bytes += 8 * out.word_counts[i];
  }
}

}  // namespace

void CadExchange::forward(const CadCall& call, const kernels::AttentionIO* io) {
  const CadStepPlan& plan = *call.plan;
  const CadGroup& g = plan.groups[call.group];
  const int me = world_.rank(), ranks = world_.size();
  const bool trainer = me < static_cast<int>(plan.trainers);
  const int sv = plan.server_index(me);
  const kernels::AttentionDims& dims = plan.dims;
  const Widths w{dims.q_heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.q_heads};
  CADTRAIN_CHECK(!trainer || io != nullptr, "CAD forward: trainer rank {} without tensors", me);
  const auto header = [&](int sender, WirePhase phase, uint64_t floats) {
    return WireHeader{static_cast<uint64_t>(sender), phase, static_cast<uint64_t>(call.layer), call.group, call.serial,
                      floats};
  };
  CadLayerTraffic& traffic = layer_traffic(call.layer);

  // Dispatch: Q and K/V rows to the servers.
  Mailbox out(ranks), in(ranks);
  if (trainer) {
    for (int dst = 0; dst < ranks; ++dst) {
      const int s = plan.server_index(dst);
      if (s < 0) continue;
      const auto& segs = g.segments[static_cast<size_t>(me)][static_cast<size_t>(s)];
      const uint64_t floats = payload_floats(segs, WirePhase::FORWARD_IN, w, call.resend);
      append_descriptor(out.words, header(me, WirePhase::FORWARD_IN, floats), segs);
      out.word_counts[static_cast<size_t>(dst)] = descriptor_words(segs.size());
      for (const WireSegment& seg : segs) {
        if (is_query(seg)) {
          append_rows(out.floats, io->q, seg.src_row0, seg.rows, w.qd);
        } else {
          append_rows(out.floats, io->k, seg.src_row0, seg.rows, w.kvd);
          append_rows(out.floats, io->v, seg.src_row0, seg.rows, w.kvd);
        }
      }
      out.float_counts[static_cast<size_t>(dst)] = floats;
    }
  }
  if (sv >= 0) {
    for (uint32_t src = 0; src < plan.trainers; ++src) {
      const auto& segs = g.segments[src][static_cast<size_t>(sv)];
      in.word_counts[src] = descriptor_words(segs.size());
      in.float_counts[src] = payload_floats(segs, WirePhase::FORWARD_IN, w, call.resend);
    }
  }
  exchange(world_, out, in, stats_, traffic.forward_bytes, true, "CAD forward dispatch", call.layer);

  // Server: check every descriptor, fill the buffers, one fused kernel call.
  KeptTensors t;
  if (sv >= 0) {
    const ServerPlan& sp = g.plan.server_plans(sv);
    t.q.assign(static_cast<size_t>(sp.q_rows() * w.qd), 0.0f);
    t.k.assign(static_cast<size_t>(sp.kv_rows() * w.kvd), 0.0f);
    t.v.assign(static_cast<size_t>(sp.kv_rows() * w.kvd), 0.0f);
    t.o.assign(static_cast<size_t>(sp.q_rows() * w.qd), 0.0f);
    t.lse.assign(static_cast<size_t>(sp.q_rows() * w.hq), -INFINITY);
    for (uint32_t src = 0; src < plan.trainers; ++src) {
      const auto& segs = g.segments[src][static_cast<size_t>(sv)];
      const uint64_t floats = in.float_counts[src];
      check_descriptor(std::span(in.words).subspan(in.word_offset(static_cast<int>(src)), in.word_counts[src]),
                       static_cast<int>(src),
                       header(static_cast<int>(src), WirePhase::FORWARD_IN,
                              payload_floats(segs, WirePhase::FORWARD_IN, w, call.resend)),
                       segs, floats);
      Reader reader(in.floats.data() + in.float_offset(static_cast<int>(src)), floats);
      for (const WireSegment& seg : segs) {
        if (is_query(seg)) {
          reader.copy_rows(t.q.data(), seg.dst_row0, seg.rows, w.qd);
        } else {
          reader.copy_rows(t.k.data(), seg.dst_row0, seg.rows, w.kvd);
          reader.copy_rows(t.v.data(), seg.dst_row0, seg.rows, w.kvd);
        }
      }
    }
    const std::vector<kernels::AttentionTask> tasks = server_tasks(sp);
    const auto t0 = Clock::now();
    kernels::attention_forward_tasks(t.o.data(), t.lse.data(), t.q.data(), t.k.data(), t.v.data(), tasks, dims);
    stats_.busy_s += since(t0);
    stats_.task_cost += sp.load();
    stats_.tasks += tasks.size();
  }

  // Return: O and LSE of every query segment to its owner.
  Mailbox back(ranks), res(ranks);
  if (sv >= 0) {
    for (uint32_t dst = 0; dst < plan.trainers; ++dst) {
      const auto& segs = g.segments[dst][static_cast<size_t>(sv)];
      const uint64_t floats = payload_floats(segs, WirePhase::FORWARD_OUT, w, call.resend);
      append_descriptor(back.words, header(me, WirePhase::FORWARD_OUT, floats), segs);
      back.word_counts[dst] = descriptor_words(segs.size());
      for (const WireSegment& seg : segs) {
        if (!is_query(seg)) continue;
        append_rows(back.floats, t.o.data(), seg.dst_row0, seg.rows, w.qd);
        append_rows(back.floats, t.lse.data(), seg.dst_row0, seg.rows, w.hq);
      }
      back.float_counts[dst] = floats;
    }
  }
  if (trainer) {
    for (int src = 0; src < ranks; ++src) {
      const int s = plan.server_index(src);
      if (s < 0) continue;
      const auto& segs = g.segments[static_cast<size_t>(me)][static_cast<size_t>(s)];
      res.word_counts[static_cast<size_t>(src)] = descriptor_words(segs.size());
      res.float_counts[static_cast<size_t>(src)] = payload_floats(segs, WirePhase::FORWARD_OUT, w, call.resend);
    }
  }
  exchange(world_, back, res, stats_, traffic.forward_bytes, true, "CAD forward return", call.layer);
  if (trainer) {
    std::vector<float> o_part, lse_part;
    for (int src = 0; src < ranks; ++src) {
      const int s = plan.server_index(src);
      if (s < 0) continue;
      const auto& segs = g.segments[static_cast<size_t>(me)][static_cast<size_t>(s)];
      const uint64_t floats = res.float_counts[static_cast<size_t>(src)];
      check_descriptor(std::span(res.words).subspan(res.word_offset(src), res.word_counts[static_cast<size_t>(src)]),
                       src, header(src, WirePhase::FORWARD_OUT, payload_floats(segs, WirePhase::FORWARD_OUT, w, false)),
                       segs, floats);
      Reader reader(res.floats.data() + res.float_offset(src), floats);
      for (const WireSegment& seg : segs) {
        if (!is_query(seg)) continue;
        const float* o = reader.take(seg.rows * w.qd);
        const float* lse = reader.take(seg.rows * w.hq);
        // Partials of one query row merge exactly by LSE (the row's first partial meets 0, -inf).
        kernels::merge_attention_partials(io->o + seg.src_row0 * w.qd, io->lse + seg.src_row0 * w.hq, o, lse,
                                          seg.rows, dims.q_heads, dims.head_dim);
      }
    }
  }
  if (sv >= 0 && !call.resend) {
    stats_.kept_bytes += t.bytes();
    stats_.kept_bytes_peak = std::max(stats_.kept_bytes_peak, stats_.kept_bytes);
    kept_[{call.layer, call.group}] = std::move(t);
  }
}

void CadExchange::backward(const CadCall& call, const kernels::AttentionIO* io, const kernels::AttentionGrads* grads) {
  const CadStepPlan& plan = *call.plan;
  const CadGroup& g = plan.groups[call.group];
  const int me = world_.rank(), ranks = world_.size();
  const bool trainer = me < static_cast<int>(plan.trainers);
  const int sv = plan.server_index(me);
  const kernels::AttentionDims& dims = plan.dims;
  const Widths w{dims.q_heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.q_heads};
  const bool resend = call.resend;
  CADTRAIN_CHECK(!trainer || (io != nullptr && grads != nullptr), "CAD backward: trainer rank {} without tensors", me);
  const auto header = [&](int sender, WirePhase phase, uint64_t floats) {
    return WireHeader{static_cast<uint64_t>(sender), phase, static_cast<uint64_t>(call.layer), call.group, call.serial,
                      floats};
  };
  CadLayerTraffic& traffic = layer_traffic(call.layer);

  // Dispatch: dO (and, resending, Q, O, LSE, K, V).
  Mailbox out(ranks), in(ranks);
  if (trainer) {
    for (int dst = 0; dst < ranks; ++dst) {
      const int s = plan.server_index(dst);
      if (s < 0) continue;
      const auto& segs = g.segments[static_cast<size_t>(me)][static_cast<size_t>(s)];
      const uint64_t floats = payload_floats(segs, WirePhase::BACKWARD_IN, w, resend);
      append_descriptor(out.words, header(me, WirePhase::BACKWARD_IN, floats), segs);
      out.word_counts[static_cast<size_t>(dst)] = descriptor_words(segs.size());
      for (const WireSegment& seg : segs) {
        if (is_query(seg)) {
          if (resend) {
            append_rows(out.floats, io->q, seg.src_row0, seg.rows, w.qd);
            append_rows(out.floats, io->o, seg.src_row0, seg.rows, w.qd);
            append_rows(out.floats, io->lse, seg.src_row0, seg.rows, w.hq);
          }
          append_rows(out.floats, grads->dout, seg.src_row0, seg.rows, w.qd);
        } else if (resend) {
          append_rows(out.floats, io->k, seg.src_row0, seg.rows, w.kvd);
          append_rows(out.floats, io->v, seg.src_row0, seg.rows, w.kvd);
        }
      }
      out.float_counts[static_cast<size_t>(dst)] = floats;
    }
  }
  if (sv >= 0) {
    for (uint32_t src = 0; src < plan.trainers; ++src) {
      const auto& segs = g.segments[src][static_cast<size_t>(sv)];
      in.word_counts[src] = descriptor_words(segs.size());
      in.float_counts[src] = payload_floats(segs, WirePhase::BACKWARD_IN, w, resend);
    }
  }
  exchange(world_, out, in, stats_, traffic.backward_bytes, false, "CAD backward dispatch", call.layer);

  std::vector<float> dq, dk, dv;
  if (sv >= 0) {
    const ServerPlan& sp = g.plan.server_plans(sv);
    KeptTensors fresh;
    KeptTensors* t = &fresh;
    if (!resend) {
      const auto it = kept_.find({call.layer, call.group});
      CADTRAIN_CHECK(it != kept_.end(), "CAD backward of layer {} group {}: server rank {} holds no forward state for it",
                     call.layer, call.group, me);
      t = &it->second;
    } else {
      fresh.q.assign(static_cast<size_t>(sp.q_rows() * w.qd), 0.0f);
      fresh.o.assign(static_cast<size_t>(sp.q_rows() * w.qd), 0.0f);
      fresh.lse.assign(static_cast<size_t>(sp.q_rows() * w.hq), 0.0f);
      fresh.k.assign(static_cast<size_t>(sp.kv_rows() * w.kvd), 0.0f);
      fresh.v.assign(static_cast<size_t>(sp.kv_rows() * w.kvd), 0.0f);
    }
    std::vector<float> dout(static_cast<size_t>(sp.q_rows() * w.qd), 0.0f);
    for (uint32_t src = 0; src < plan.trainers; ++src) {
      const auto& segs = g.segments[src][static_cast<size_t>(sv)];
      const uint64_t floats = in.float_counts[src];
      check_descriptor(std::span(in.words).subspan(in.word_offset(static_cast<int>(src)), in.word_counts[src]),
                       static_cast<int>(src),
                       header(static_cast<int>(src), WirePhase::BACKWARD_IN,
                              payload_floats(segs, WirePhase::BACKWARD_IN, w, resend)),
                       segs, floats);
      Reader reader(in.floats.data() + in.float_offset(static_cast<int>(src)), floats);
      for (const WireSegment& seg : segs) {
        if (is_query(seg)) {
          if (resend) {
            reader.copy_rows(fresh.q.data(), seg.dst_row0, seg.rows, w.qd);
            reader.copy_rows(fresh.o.data(), seg.dst_row0, seg.rows, w.qd);
            reader.copy_rows(fresh.lse.data(), seg.dst_row0, seg.rows, w.hq);
          }
          reader.copy_rows(dout.data(), seg.dst_row0, seg.rows, w.qd);
        } else if (resend) {
          reader.copy_rows(fresh.k.data(), seg.dst_row0, seg.rows, w.kvd);
          reader.copy_rows(fresh.v.data(), seg.dst_row0, seg.rows, w.kvd);
        }
      }
    }
    dq.assign(static_cast<size_t>(sp.q_rows() * w.qd), 0.0f);
    dk.assign(static_cast<size_t>(sp.kv_rows() * w.kvd), 0.0f);  // tasks of one document sum into its K/V rows
    dv.assign(static_cast<size_t>(sp.kv_rows() * w.kvd), 0.0f);
    const std::vector<kernels::AttentionTask> tasks = server_tasks(sp);
    const auto t0 = Clock::now();
    kernels::attention_backward_tasks(dq.data(), dk.data(), dv.data(), dout.data(), t->q.data(), t->k.data(),
                                      t->v.data(), t->o.data(), t->lse.data(), tasks, dims);
    stats_.busy_s += since(t0);
    if (!resend) {
      stats_.kept_bytes -= std::min(stats_.kept_bytes, t->bytes());
      kept_.erase({call.layer, call.group});
    }
  }

  // Return: dQ of query segments, dK and dV of key/value segments.
  Mailbox back(ranks), res(ranks);
  if (sv >= 0) {
    for (uint32_t dst = 0; dst < plan.trainers; ++dst) {
      const auto& segs = g.segments[dst][static_cast<size_t>(sv)];
      const uint64_t floats = payload_floats(segs, WirePhase::BACKWARD_OUT, w, resend);
      append_descriptor(back.words, header(me, WirePhase::BACKWARD_OUT, floats), segs);
      back.word_counts[dst] = descriptor_words(segs.size());
      for (const WireSegment& seg : segs) {
        if (is_query(seg)) {
          append_rows(back.floats, dq.data(), seg.dst_row0, seg.rows, w.qd);
        } else {
          append_rows(back.floats, dk.data(), seg.dst_row0, seg.rows, w.kvd);
          append_rows(back.floats, dv.data(), seg.dst_row0, seg.rows, w.kvd);
        }
      }
      back.float_counts[dst] = floats;
    }
  }
  if (trainer) {
    for (int src = 0; src < ranks; ++src) {
      const int s = plan.server_index(src);
      if (s < 0) continue;
      const auto& segs = g.segments[static_cast<size_t>(me)][static_cast<size_t>(s)];
      res.word_counts[static_cast<size_t>(src)] = descriptor_words(segs.size());
      res.float_counts[static_cast<size_t>(src)] = payload_floats(segs, WirePhase::BACKWARD_OUT, w, resend);
    }
  }
  exchange(world_, back, res, stats_, traffic.backward_bytes, false, "CAD backward return", call.layer);
  if (trainer) {
    for (int src = 0; src < ranks; ++src) {
      const int s = plan.server_index(src);
      if (s < 0) continue;
      const auto& segs = g.segments[static_cast<size_t>(me)][static_cast<size_t>(s)];
      const uint64_t floats = res.float_counts[static_cast<size_t>(src)];
      check_descriptor(std::span(res.words).subspan(res.word_offset(src), res.word_counts[static_cast<size_t>(src)]),
                       src, header(src, WirePhase::BACKWARD_OUT, payload_floats(segs, WirePhase::BACKWARD_OUT, w, resend)),
                       segs, floats);
      Reader reader(res.floats.data() + res.float_offset(src), floats);
      const auto add_rows = [&](float* dst, int64_t row0, int64_t rows, int64_t width) {
        const float* x = reader.take(rows * width);
        float* y = dst + row0 * width;
        for (int64_t i = 0; i < rows * width; ++i) y[i] += x[i];
      };
      for (const WireSegment& seg : segs) {
        if (is_query(seg)) {
          add_rows(grads->dq, seg.src_row0, seg.rows, w.qd);
        } else {
          add_rows(grads->dk, seg.src_row0, seg.rows, w.kvd);
          add_rows(grads->dv, seg.src_row0, seg.rows, w.kvd);
        }
      }
    }
  }
}

}  // namespace cadtrain::attention_servers
