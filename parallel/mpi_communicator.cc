// The MPI backend (parallel/mpi_communicator.h).
#include "parallel/mpi_communicator.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include "parallel/pending_op.h"

namespace cadtrain::parallel {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail("{}: MPI error: {}", what, std::string(text, static_cast<size_t>(len)));
}

namespace {

// Collective tags: each collective takes the next of kTagSlots slots (every rank numbers its
// collectives alike) and each of its rounds a tag of its own, so that collectives in flight at
// once never match each other's messages.
constexpr int kTagSlots = 8192;
constexpr int kRoundsPerCollective = 2;
constexpr int kMaxUserTag = 32767;  // the MPI standard's minimum MPI_TAG_UB

MPI_Datatype mpi_type(ElementType t) {
  switch (t) {
    case ElementType::F32: return MPI_FLOAT;
    case ElementType::F64: return MPI_DOUBLE;
    case ElementType::BF16:
    case ElementType::F16: return MPI_UINT16_T;
    case ElementType::I32: return MPI_INT32_T;
    case ElementType::I64: return MPI_INT64_T;
    case ElementType::U32: return MPI_UINT32_T;
    case ElementType::U64: return MPI_UINT64_T;
    case ElementType::U8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

// What every communicator of one MPI group and its operations in flight share.
struct MpiGroup {
  MPI_Comm user = MPI_COMM_NULL;  // point-to-point traffic of the caller
  MPI_Comm coll = MPI_COMM_NULL;  // collective traffic
  int rank = 0, size = 1;
  std::string name;
  std::vector<int> world_ranks;
  std::shared_ptr<Watchdog> watchdog;
  std::thread::id mpi_thread;
  int next_slot = 0;

  MpiGroup() = default;
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;
  ~MpiGroup() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (user != MPI_COMM_NULL) MPI_Comm_free(&user);
    if (coll != MPI_COMM_NULL) MPI_Comm_free(&coll);
  }

  std::string where() const { return fmt::format("{} on communicator \"{}\"", watchdog->identity().describe(), name); }
};

// memcpy that accepts the null pointers of empty buffers.
void copy_bytes(void* dst, const void* src, size_t n) {
  if (n > 0) std::memcpy(dst, src, n);
}

// Elements [begin, end) of block b when n elements are cut into p nearly equal blocks.
size_t block_begin(size_t n, int p, int b) {
  const size_t base = n / static_cast<size_t>(p), extra = n % static_cast<size_t>(p);
  return base * static_cast<size_t>(b) + std::min(static_cast<size_t>(b), extra);
}

// out[i] = ((x_0[i] + x_1[i]) + x_2[i]) + ..., x_r = blocks + r * n: the order of a loop over
// ranks, so every rank and every run gets the same bits.
template <typename T>
void reduce_blocks(T* out, const T* blocks, int p, size_t n, ReduceOp op) {
  if (n == 0) return;
  std::copy(blocks, blocks + n, out);
  for (int r = 1; r < p; ++r) {
    const T* x = blocks + n * static_cast<size_t>(r);
    switch (op) {
      case ReduceOp::SUM:
        for (size_t i = 0; i < n; ++i) out[i] = out[i] + x[i];
        break;
      case ReduceOp::MAX:
        for (size_t i = 0; i < n; ++i) out[i] = std::max(out[i], x[i]);
        break;
      case ReduceOp::MIN:
        for (size_t i = 0; i < n; ++i) out[i] = std::min(out[i], x[i]);
        break;
    }
  }
}

// Reduces p blocks of n elements, laid out one after another in `blocks`, into out.
void reduce_in_rank_order(void* out, const std::byte* blocks, int p, size_t n, ElementType type, ReduceOp op) {
  const auto run = [&](auto* typed_out) {
    using T = std::remove_pointer_t<decltype(typed_out)>;
    reduce_blocks(typed_out, reinterpret_cast<const T*>(blocks), p, n, op);
  };
  switch (type) {
    case ElementType::F32: return run(static_cast<float*>(out));
    case ElementType::F64: return run(static_cast<double*>(out));
    case ElementType::I32: return run(static_cast<int32_t*>(out));
    case ElementType::I64: return run(static_cast<int64_t*>(out));
    case ElementType::U32: return run(static_cast<uint32_t*>(out));
    case ElementType::U64: return run(static_cast<uint64_t*>(out));
    case ElementType::U8: return run(static_cast<uint8_t*>(out));
    case ElementType::BF16:
    case ElementType::F16: break;
  }
  fail("reductions of {} are not supported by the MPI backend (host buffers are fp32)", element_name(type));
}

// One operation: rounds of point-to-point messages; a round's `finish` runs once all its
// messages completed, then the next round is posted.
class MpiOp : public PendingOp {
 public:
  struct Round {
    std::function<void(MpiOp&)> post;
    std::function<void()> finish;
  };

  MpiOp(std::shared_ptr<MpiGroup> group, OpDescription description, ElementType type)
      : PendingOp(group->watchdog, std::move(description)), group_(std::move(group)), type_(type) {}

  ~MpiOp() override {
    // Requests still active here belong to an operation abandoned after a timeout (the job is
    // ending); free them so MPI does not keep them.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (auto& r : requests_) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
  }

  void add_round(Round round) { rounds_.push_back(std::move(round)); }

  void send(const void* data, size_t count, int peer, int tag, MPI_Comm comm) {
    post(count, peer, -1, [&](int n, MPI_Request* r) {
      return MPI_Isend(data, n, mpi_type(type_), peer, tag, comm, r);
    });
  }
  void recv(void* data, size_t count, int peer, int tag, MPI_Comm comm) {
    post(count, peer, static_cast<int64_t>(count), [&](int n, MPI_Request* r) {
      return MPI_Irecv(data, n, mpi_type(type_), peer, tag, comm, r);
    });
  }

 protected:
  bool progress() override {
    while (true) {
      if (!posted_) {
        if (round_ == rounds_.size()) return true;
        if (rounds_[round_].post) rounds_[round_].post(*this);
        posted_ = true;
        active_ = requests_.size();
      }
      if (active_ > 0 && !test_some()) return false;
      if (active_ > 0) return false;
      if (rounds_[round_].finish) rounds_[round_].finish();
      requests_.clear();
      peers_.clear();
      expected_.clear();
      posted_ = false;
      ++round_;
    }
  }

  std::vector<std::pair<int, int>> waiting_for() const override {
    std::vector<std::pair<int, int>> out;
    for (size_t i = 0; i < requests_.size(); ++i) {
      if (requests_[i] == MPI_REQUEST_NULL) continue;
      const int p = peers_[i];
      out.emplace_back(p, group_->world_ranks[static_cast<size_t>(p)]);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

 private:
  template <typename Start>
  void post(size_t count, int peer, int64_t expected, Start&& start) {
    CADTRAIN_CHECK(count <= static_cast<size_t>(INT_MAX), "{}: a message of {} {} elements exceeds MPI's int count",
                   group_->where(), count, element_name(type_));
    requests_.push_back(MPI_REQUEST_NULL);
    peers_.push_back(peer);
    expected_.push_back(expected);
    const int rc = start(static_cast<int>(count), &requests_.back());
    if (rc != MPI_SUCCESS) check_mpi(rc, group_->where().c_str());
  }

  // Completes what has arrived; true when something completed. Checks every received size.
  bool test_some() {
    const int n = static_cast<int>(requests_.size());
    indices_.resize(requests_.size());
    statuses_.resize(requests_.size());
    int outcount = 0;
    const int rc = MPI_Testsome(n, requests_.data(), &outcount, indices_.data(), statuses_.data());
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) check_mpi(rc, group_->where().c_str());
    if (outcount == MPI_UNDEFINED || outcount == 0) return false;
    for (int k = 0; k < outcount; ++k) {
      const size_t i = static_cast<size_t>(indices_[static_cast<size_t>(k)]);
      const MPI_Status& st = statuses_[static_cast<size_t>(k)];
      const int peer = peers_[i];
      if (rc == MPI_ERR_IN_STATUS && st.MPI_ERROR != MPI_SUCCESS) {
        check_mpi(st.MPI_ERROR, fmt::format("{}: message {} rank {} (world rank {}), {} {} expected",
                                            group_->where(), expected_[i] >= 0 ? "from" : "to", peer,
                                            group_->world_ranks[static_cast<size_t>(peer)],
                                            expected_[i] >= 0 ? expected_[i] : 0, element_name(type_))
                                    .c_str());
      }
      if (expected_[i] >= 0) {
        int got = 0;
        MPI_Get_count(&st, mpi_type(type_), &got);
        if (got != expected_[i]) {
          fail("{}: rank {} (world rank {}) sent {} {} elements but this rank expected {}", group_->where(), peer,
               group_->world_ranks[static_cast<size_t>(peer)], got, element_name(type_), expected_[i]);
        }
      }
      --active_;
    }
    return true;
  }

  std::shared_ptr<MpiGroup> group_;
  ElementType type_;
  std::vector<Round> rounds_;
  size_t round_ = 0;
  bool posted_ = false;
  size_t active_ = 0;
  std::vector<MPI_Request> requests_;
  std::vector<int> peers_;
  std::vector<int64_t> expected_;  // elements a receive expects; -1 for a send
  std::vector<int> indices_;
  std::vector<MPI_Status> statuses_;
};

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(std::shared_ptr<MpiGroup> group) : g_(std::move(group)) {}

  int rank() const override { return g_->rank; }
  int size() const override { return g_->size; }
  const std::string& name() const override { return g_->name; }
  int world_rank(int r) const override {
    CADTRAIN_CHECK(r >= 0 && r < g_->size, "{}: rank {} out of range [0, {})", g_->where(), r, g_->size);
    return g_->world_ranks[static_cast<size_t>(r)];
  }
  DeviceId::Kind memory() const override { return DeviceId::Kind::HOST; }
  std::shared_ptr<Watchdog> shared_watchdog() const override { return g_->watchdog; }

  Request isend(ConstBufferView buf, int dst, int tag) override {
    check_call(buf, "send");
    check_peer(dst, "destination");
    check_tag(tag);
    auto op = new_op(OpDescription::of("send to", {}, dst, tag), buf);
    auto group = g_;
    op->add_round({[=](MpiOp& m) { m.send(buf.data, buf.count, dst, tag, group->user); }, nullptr});
    return start(std::move(op));
  }

  Request irecv(BufferView buf, int src, int tag) override {
    check_call(buf, "receive");
    check_peer(src, "source");
    check_tag(tag);
    auto op = new_op(OpDescription::of("receive from", {}, src, tag), buf);
    auto group = g_;
    op->add_round({[=](MpiOp& m) { m.recv(buf.data, buf.count, src, tag, group->user); }, nullptr});
    return start(std::move(op));
  }

  Request iall_reduce(ConstBufferView send, BufferView recv, ReduceOp op) override {
    const std::string_view what = "all_reduce";
    check_call(send, what);
    check_same(send, recv, what);
    check_reducible(send.type, what);
    CADTRAIN_CHECK(send.count == recv.count, "{}: {}: send has {} elements, recv {}", g_->where(), what, send.count,
                   recv.count);
    if (send.data != recv.data) check_disjoint(send, recv, what);
    const size_t n = send.count;
    const int p = g_->size, me = g_->rank;
    const size_t mine = block_begin(n, p, me + 1) - block_begin(n, p, me);
    auto o = new_op(OpDescription::of(what, reduce_op_name(op)), send);
    auto scratch = std::make_shared<std::vector<std::byte>>(mine * element_size(send.type) * static_cast<size_t>(p));
    const int tag = next_tag();
    o->add_round(reduce_scatter_round(send, recv.slice(block_begin(n, p, me), mine), op, scratch, tag,
                                      [n, p](int b) { return block_begin(n, p, b); }));
    o->add_round(all_gather_round(recv, tag + 1, [n, p](int b) { return block_begin(n, p, b); }));
    return start(std::move(o));
  }

  Request ireduce_scatter(ConstBufferView send, BufferView recv, ReduceOp op) override {
    const std::string_view what = "reduce_scatter";
    check_call(send, what);
    check_same(send, recv, what);
    check_reducible(send.type, what);
    const size_t c = recv.count;
    CADTRAIN_CHECK(send.count == c * static_cast<size_t>(g_->size), "{}: {}: send has {} elements, not {} ranks x {}",
                   g_->where(), what, send.count, g_->size, c);
    check_disjoint(send, recv, what);
    auto o = new_op(OpDescription::of(what, reduce_op_name(op)), send);
    auto scratch = std::make_shared<std::vector<std::byte>>(send.bytes());
    o->add_round(reduce_scatter_round(send, recv, op, scratch, next_tag(), [c](int b) { return c * static_cast<size_t>(b); }));
    return start(std::move(o));
  }

  Request iall_gather(ConstBufferView send, BufferView recv) override {
    check_call(send, "all_gather");
    check_same(send, recv, "all_gather");
    const size_t c = send.count;
    CADTRAIN_CHECK(recv.count == c * static_cast<size_t>(g_->size), "{}: all_gather: recv has {} elements, not {} ranks x {}",
                   g_->where(), recv.count, g_->size, c);
    const BufferView own = recv.slice(c * static_cast<size_t>(g_->rank), c);
    if (own.data != send.data) {
      check_disjoint(send, recv, "all_gather");
      copy_bytes(own.data, send.data, send.bytes());
    }
    auto o = new_op(OpDescription::of("all_gather"), send);
    o->add_round(all_gather_round(recv, next_tag(), [c](int b) { return c * static_cast<size_t>(b); }));
    return start(std::move(o));
  }

  Request iall_to_all_v(ConstBufferView send, std::span<const size_t> send_counts, BufferView recv,
                        std::span<const size_t> recv_counts) override {
    check_call(send, "all_to_all_v");
    check_same(send, recv, "all_to_all_v");
    const auto p = static_cast<size_t>(g_->size), me = static_cast<size_t>(g_->rank);
    CADTRAIN_CHECK(send_counts.size() == p && recv_counts.size() == p,
                   "{}: all_to_all_v: {} send_counts and {} recv_counts for {} ranks", g_->where(), send_counts.size(),
                   recv_counts.size(), p);
    const size_t send_total = std::accumulate(send_counts.begin(), send_counts.end(), size_t{0});
    const size_t recv_total = std::accumulate(recv_counts.begin(), recv_counts.end(), size_t{0});
    CADTRAIN_CHECK(send_total <= send.count, "{}: all_to_all_v: send_counts sum to {} but the send buffer holds {}",
                   g_->where(), send_total, send.count);
    CADTRAIN_CHECK(recv_total <= recv.count, "{}: all_to_all_v: recv_counts sum to {} but the recv buffer holds {}",
                   g_->where(), recv_total, recv.count);
    CADTRAIN_CHECK(send_counts[me] == recv_counts[me],
                   "{}: all_to_all_v: this rank sends itself {} elements but recv_counts[{}] = {}", g_->where(),
                   send_counts[me], me, recv_counts[me]);
    check_disjoint(send.slice(0, send_total), recv.slice(0, recv_total), "all_to_all_v");
    std::vector<size_t> send_at(p + 1, 0), recv_at(p + 1, 0);
    std::partial_sum(send_counts.begin(), send_counts.end(), send_at.begin() + 1);
    std::partial_sum(recv_counts.begin(), recv_counts.end(), recv_at.begin() + 1);
    copy_bytes(recv.slice(recv_at[me], recv_counts[me]).data, send.slice(send_at[me], send_counts[me]).data,
               send_counts[me] * element_size(send.type));
    auto o = new_op(OpDescription::of("all_to_all_v"), send.slice(0, send_total));
    const int tag = next_tag();
    const std::vector<size_t> sc(send_counts.begin(), send_counts.end()), rc(recv_counts.begin(), recv_counts.end());
    auto group = g_;
    o->add_round({[=](MpiOp& op) {
                    for (size_t k = 1; k < p; ++k) {
                      const size_t j = (me + k) % p, i = (me + p - k) % p;
                      op.recv(recv.slice(recv_at[i], rc[i]).data, rc[i], static_cast<int>(i), tag, group->coll);
                      op.send(send.slice(send_at[j], sc[j]).data, sc[j], static_cast<int>(j), tag, group->coll);
                    }
                  },
                  nullptr});
    return start(std::move(o));
  }

  Request ibroadcast(BufferView buf, int root) override {
    check_call(buf, "broadcast");
    check_peer(root, "root");
    auto o = new_op(OpDescription::of("broadcast from", {}, root), buf);
    const int tag = next_tag();
    auto group = g_;
    o->add_round({[=](MpiOp& op) {
                    if (group->rank == root) {
                      for (int j = 0; j < group->size; ++j) {
                        if (j != root) op.send(buf.data, buf.count, j, tag, group->coll);
                      }
                    } else {
                      op.recv(buf.data, buf.count, root, tag, group->coll);
                    }
                  },
                  nullptr});
    return start(std::move(o));
  }

  Request ibarrier() override {
    check_thread("barrier");
    auto o = new_op(OpDescription::of("barrier"), ConstBufferView{nullptr, ElementType::U8, 0, DeviceId::host()});
    const int tag = next_tag();
    auto group = g_;
    o->add_round({[=](MpiOp& op) {
                    for (int j = 0; j < group->size; ++j) {
                      if (j == group->rank) continue;
                      op.recv(nullptr, 0, j, tag, group->coll);
                      op.send(nullptr, 0, j, tag, group->coll);
                    }
                  },
                  nullptr});
    return start(std::move(o));
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    check_thread("split");
    CADTRAIN_CHECK(color >= 0, "{}: split into \"{}\": color {} must be >= 0", g_->where(), name, color);
    MPI_Comm part = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(g_->user, color, key, &part), g_->where().c_str());
    std::unique_ptr<Communicator> out;
    try {
      out = make_mpi_communicator(part, name, g_->watchdog, g_->mpi_thread);
    } catch (...) {
      MPI_Comm_free(&part);
      throw;
    }
    MPI_Comm_free(&part);
    return out;
  }

 private:
  // A reduce-scatter round: block b of `send` starts at at(b) and has out.count elements; the
  // sum of every rank's block rank() lands in `out`.
  template <typename At>
  MpiOp::Round reduce_scatter_round(ConstBufferView send, BufferView out, ReduceOp op,
                                    std::shared_ptr<std::vector<std::byte>> scratch, int tag, At at) {
    auto group = g_;
    const int p = g_->size, me = g_->rank;
    const size_t esize = element_size(send.type);
    // Rank j's contribution to our block goes to scratch block j; ours is copied in, so that the
    // reduction reads only scratch and `out` may alias `send`.
    const auto post = [=](MpiOp& mop) {
      const size_t mine = out.count;
      std::byte* blocks = scratch->data();
      copy_bytes(blocks + esize * mine * static_cast<size_t>(me), send.slice(at(me), mine).data, mine * esize);
      for (int k = 1; k < p; ++k) {
        const int j = (me + k) % p, i = (me + p - k) % p;
        mop.recv(blocks + esize * mine * static_cast<size_t>(i), mine, i, tag, group->coll);
        const size_t theirs = at(j + 1) - at(j);
        mop.send(send.slice(at(j), theirs).data, theirs, j, tag, group->coll);
      }
    };
    const auto finish = [=]() { reduce_in_rank_order(out.data, scratch->data(), p, out.count, out.type, op); };
    return {post, finish};
  }

  // An all-gather round over `buf`, whose block b starts at at(b); this rank's block is in place.
  template <typename At>
  MpiOp::Round all_gather_round(BufferView buf, int tag, At at) {
    auto group = g_;
    const int p = g_->size, me = g_->rank;
    return {[=](MpiOp& mop) {
              for (int k = 1; k < p; ++k) {
                const int j = (me + k) % p, i = (me + p - k) % p;
                mop.recv(buf.slice(at(i), at(i + 1) - at(i)).data, at(i + 1) - at(i), i, tag, group->coll);
                mop.send(buf.slice(at(me), at(me + 1) - at(me)).data, at(me + 1) - at(me), j, tag, group->coll);
              }
            },
            nullptr};
  }

  std::unique_ptr<MpiOp> new_op(OpDescription d, ConstBufferView buf) {
    d.buffer = buf;
    d.comm = &g_->name;
    d.comm_size = g_->size;
    d.context = g_->watchdog->context();
    return std::make_unique<MpiOp>(g_, std::move(d), buf.type);
  }

  // Posts the first round at once, so that the messages are on their way before the caller
  // next tests the request.
  static Request start(std::unique_ptr<MpiOp> op) {
    Request r(std::move(op));
    r.test();
    return r;
  }

  int next_tag() {
    const int slot = g_->next_slot;
    g_->next_slot = (slot + 1) % kTagSlots;
    return slot * kRoundsPerCollective;
  }

  void check_thread(std::string_view what) const {
    CADTRAIN_CHECK(std::this_thread::get_id() == g_->mpi_thread,
                   "{}: {} called from a thread other than the one that initialised MPI (MPI_THREAD_FUNNELED)",
                   g_->where(), what);
  }
  void check_call(ConstBufferView buf, std::string_view what) const {
    check_thread(what);
    CADTRAIN_CHECK(buf.device.is_host(), "{}: {}: the MPI backend takes host buffers, not {} (use the NCCL communicator)",
                   g_->where(), what, buf.describe());
    CADTRAIN_CHECK(buf.data != nullptr || buf.count == 0, "{}: {}: null buffer of {} elements", g_->where(), what,
                   buf.count);
  }
  void check_same(ConstBufferView send, ConstBufferView recv, std::string_view what) const {
    CADTRAIN_CHECK(recv.device.is_host(), "{}: {}: the MPI backend takes host buffers, not {}", g_->where(), what,
                   recv.describe());
    CADTRAIN_CHECK(send.type == recv.type, "{}: {}: send is {} but recv is {}", g_->where(), what, send.describe(),
                   recv.describe());
    CADTRAIN_CHECK(recv.data != nullptr || recv.count == 0, "{}: {}: null recv buffer", g_->where(), what);
  }
  void check_disjoint(ConstBufferView a, ConstBufferView b, std::string_view what) const {
    const auto* a0 = static_cast<const std::byte*>(a.data);
    const auto* b0 = static_cast<const std::byte*>(b.data);
    const bool overlap = a.bytes() > 0 && b.bytes() > 0 && a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
    CADTRAIN_CHECK(!overlap, "{}: {}: send and recv buffers overlap", g_->where(), what);
  }
  void check_reducible(ElementType t, std::string_view what) const {
    CADTRAIN_CHECK(t != ElementType::BF16 && t != ElementType::F16,
                   "{}: {}: reductions of {} are not supported by the MPI backend (host buffers are fp32)",
                   g_->where(), what, element_name(t));
  }
  void check_peer(int r, const char* role) const {
    CADTRAIN_CHECK(r >= 0 && r < g_->size, "{}: {} rank {} is out of range [0, {})", g_->where(), role, r, g_->size);
  }
  void check_tag(int tag) const {
    CADTRAIN_CHECK(tag >= 0 && tag <= kMaxUserTag, "{}: tag {} is outside [0, {}]", g_->where(), tag, kMaxUserTag);
  }

  std::shared_ptr<MpiGroup> g_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const std::string& name,
                                                    std::shared_ptr<Watchdog> watchdog, std::thread::id mpi_thread) {
  auto g = std::make_shared<MpiGroup>();
  g->name = name;
  g->watchdog = std::move(watchdog);
  g->mpi_thread = mpi_thread;
  const std::string where = g->watchdog->identity().describe() + ": creating communicator \"" + name + "\"";
  check_mpi(MPI_Comm_dup(comm, &g->user), where.c_str());
  check_mpi(MPI_Comm_dup(comm, &g->coll), where.c_str());
  MPI_Comm_set_errhandler(g->user, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(g->coll, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm, &g->rank);
  MPI_Comm_size(comm, &g->size);
  // World ranks of our ranks, by translating through the groups.
  MPI_Group mine, world;
  MPI_Comm_group(comm, &mine);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> ranks(static_cast<size_t>(g->size));
  std::iota(ranks.begin(), ranks.end(), 0);
  g->world_ranks.resize(ranks.size());
  MPI_Group_translate_ranks(mine, g->size, ranks.data(), world, g->world_ranks.data());
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
  return std::make_unique<MpiCommunicator>(std::move(g));
}

}  // namespace cadtrain::parallel
