// The NCCL backend (parallel/nccl/nccl_communicator.h). Plain C++ against the CUDA runtime and
// NCCL host APIs: no kernels of our own.
#include "parallel/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <numeric>
#include <vector>

#include "parallel/pending_op.h"

namespace cadtrain::parallel {
namespace {

void check_cuda(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) fail("{}: CUDA error: {}", what, cudaGetErrorString(rc));
}

void check_nccl(ncclResult_t rc, const std::string& what) {
  if (rc != ncclSuccess && rc != ncclInProgress) fail("{}: NCCL error: {}", what, ncclGetErrorString(rc));
}

ncclDataType_t nccl_type(ElementType t) {
  switch (t) {
    case ElementType::F32: return ncclFloat32;
    case ElementType::F64: return ncclFloat64;
    case ElementType::BF16: return ncclBfloat16;
    case ElementType::F16: return ncclFloat16;
    case ElementType::I32: return ncclInt32;
    case ElementType::I64: return ncclInt64;
    case ElementType::U32: return ncclUint32;
    case ElementType::U64: return ncclUint64;
    case ElementType::U8: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::SUM: return ncclSum;
    case ReduceOp::MAX: return ncclMax;
    case ReduceOp::MIN: return ncclMin;
  }
  return ncclSum;
}

// What a communicator and its operations in flight share.
struct NcclGroup {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  int rank = 0, size = 1;
  std::string name;
  std::vector<int> world_ranks;
  std::shared_ptr<Watchdog> watchdog;
  int* barrier_word = nullptr;  // device scratch for barrier()
  bool aborted = false;

  NcclGroup() = default;
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  ~NcclGroup() {
    cudaSetDevice(device);
    if (comm != nullptr) {
      if (aborted) {
        ncclCommAbort(comm);
      } else {
        ncclCommDestroy(comm);
      }
    }
    if (barrier_word != nullptr) cudaFree(barrier_word);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  std::string where() const { return fmt::format("{} on NCCL communicator \"{}\"", watchdog->identity().describe(), name); }
};

// One operation: enqueued on the group's stream, complete when the event after it has fired.
class NcclOp : public PendingOp {
 public:
  NcclOp(std::shared_ptr<NcclGroup> group, OpDescription description)
      : PendingOp(group->watchdog, std::move(description)), group_(std::move(group)) {
    check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), group_->where());
  }
  ~NcclOp() override { cudaEventDestroy(done_); }

  void record() { check_cuda(cudaEventRecord(done_, group_->stream), group_->where()); }

 protected:
  bool progress() override {
    const cudaError_t rc = cudaEventQuery(done_);
    if (rc == cudaSuccess) return true;
    if (rc != cudaErrorNotReady) check_cuda(rc, group_->where());
    ncclResult_t async = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(group_->comm, &async), group_->where());
    if (async != ncclSuccess && async != ncclInProgress) {
      group_->aborted = true;
      check_nccl(async, group_->where());
    }
    return false;
  }
  std::vector<std::pair<int, int>> waiting_for() const override { return {}; }
  bool knows_arrivals() const override { return false; }
  // The operation may never finish: the communicator is aborted, not destroyed, at the end.
  void on_timeout() override { group_->aborted = true; }

 private:
  std::shared_ptr<NcclGroup> group_;
  cudaEvent_t done_ = nullptr;
};

class NcclCommunicator : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<NcclGroup> group) : g_(std::move(group)) {}

  int rank() const override { return g_->rank; }
  int size() const override { return g_->size; }
  const std::string& name() const override { return g_->name; }
  int world_rank(int r) const override {
    CADTRAIN_CHECK(r >= 0 && r < g_->size, "{}: rank {} out of range [0, {})", g_->where(), r, g_->size);
    return g_->world_ranks[static_cast<size_t>(r)];
  }
  DeviceId::Kind memory() const override { return DeviceId::Kind::CUDA; }
  std::shared_ptr<Watchdog> shared_watchdog() const override { return g_->watchdog; }

  Request isend(ConstBufferView buf, int dst, int tag) override {
    check_buf(buf, "send");
    check_peer(dst);
    CADTRAIN_CHECK(tag >= 0 && tag <= 32767, "{}: tag {} is outside [0, 32767]", g_->where(), tag);
    return run(OpDescription::of("send to", {}, dst, tag), buf, [&] {
      return ncclSend(buf.data, buf.count, nccl_type(buf.type), dst, g_->comm, g_->stream);
    });
  }

  Request irecv(BufferView buf, int src, int tag) override {
    check_buf(buf, "receive");
    check_peer(src);
    CADTRAIN_CHECK(tag >= 0 && tag <= 32767, "{}: tag {} is outside [0, 32767]", g_->where(), tag);
    return run(OpDescription::of("receive from", {}, src, tag), buf, [&] {
      return ncclRecv(buf.data, buf.count, nccl_type(buf.type), src, g_->comm, g_->stream);
    });
  }

  Request iall_reduce(ConstBufferView send, BufferView recv, ReduceOp op) override {
    check_pair(send, recv, "all_reduce");
    CADTRAIN_CHECK(send.count == recv.count, "{}: all_reduce: send has {} elements, recv {}", g_->where(), send.count,
                   recv.count);
    return run(OpDescription::of("all_reduce", reduce_op_name(op)), send, [&] {
      return ncclAllReduce(send.data, recv.data, send.count, nccl_type(send.type), nccl_op(op), g_->comm, g_->stream);
    });
  }

  Request ireduce_scatter(ConstBufferView send, BufferView recv, ReduceOp op) override {
    check_pair(send, recv, "reduce_scatter");
    CADTRAIN_CHECK(send.count == recv.count * static_cast<size_t>(g_->size),
                   "{}: reduce_scatter: send has {} elements, not {} ranks x {}", g_->where(), send.count, g_->size,
                   recv.count);
    return run(OpDescription::of("reduce_scatter", reduce_op_name(op)), send, [&] {
      return ncclReduceScatter(send.data, recv.data, recv.count, nccl_type(send.type), nccl_op(op), g_->comm,
                               g_->stream);
    });
  }

  Request iall_gather(ConstBufferView send, BufferView recv) override {
    check_pair(send, recv, "all_gather");
    CADTRAIN_CHECK(recv.count == send.count * static_cast<size_t>(g_->size),
                   "{}: all_gather: recv has {} elements, not {} ranks x {}", g_->where(), recv.count, g_->size,
                   send.count);
    return run(OpDescription::of("all_gather"), send, [&] {
      return ncclAllGather(send.data, recv.data, send.count, nccl_type(send.type), g_->comm, g_->stream);
    });
  }

  Request iall_to_all_v(ConstBufferView send, std::span<const size_t> send_counts, BufferView recv,
                        std::span<const size_t> recv_counts) override {
    check_pair(send, recv, "all_to_all_v");
    const auto p = static_cast<size_t>(g_->size), me = static_cast<size_t>(g_->rank);
    CADTRAIN_CHECK(send_counts.size() == p && recv_counts.size() == p,
                   "{}: all_to_all_v: {} send_counts and {} recv_counts for {} ranks", g_->where(), send_counts.size(),
                   recv_counts.size(), p);
    std::vector<size_t> send_at(p + 1, 0), recv_at(p + 1, 0);
    std::partial_sum(send_counts.begin(), send_counts.end(), send_at.begin() + 1);
    std::partial_sum(recv_counts.begin(), recv_counts.end(), recv_at.begin() + 1);
    CADTRAIN_CHECK(send_at[p] <= send.count && recv_at[p] <= recv.count,
                   "{}: all_to_all_v: counts sum to {} sent and {} received but the buffers hold {} and {}", g_->where(),
                   send_at[p], recv_at[p], send.count, recv.count);
    CADTRAIN_CHECK(send_counts[me] == recv_counts[me],
                   "{}: all_to_all_v: this rank sends itself {} elements but recv_counts[{}] = {}", g_->where(),
                   send_counts[me], me, recv_counts[me]);
    return run(OpDescription::of("all_to_all_v"), send.slice(0, send_at[p]), [&] {
      const ncclDataType_t t = nccl_type(send.type);
      if (send_counts[me] > 0) {
        check_cuda(cudaMemcpyAsync(recv.slice(recv_at[me], recv_counts[me]).data,
                                   send.slice(send_at[me], send_counts[me]).data,
                                   send_counts[me] * element_size(send.type), cudaMemcpyDeviceToDevice, g_->stream),
                   g_->where());
      }
      ncclResult_t rc = ncclGroupStart();
      for (size_t j = 0; j < p && rc == ncclSuccess; ++j) {
        if (j == me) continue;
        if (send_counts[j] > 0) rc = ncclSend(send.slice(send_at[j], send_counts[j]).data, send_counts[j], t,
                                              static_cast<int>(j), g_->comm, g_->stream);
        if (rc == ncclSuccess && recv_counts[j] > 0) {
          rc = ncclRecv(recv.slice(recv_at[j], recv_counts[j]).data, recv_counts[j], t, static_cast<int>(j), g_->comm,
                        g_->stream);
        }
      }
      const ncclResult_t end = ncclGroupEnd();
      return rc != ncclSuccess ? rc : end;
    });
  }

  Request ibroadcast(BufferView buf, int root) override {
    check_buf(buf, "broadcast");
    check_peer(root);
    return run(OpDescription::of("broadcast from", {}, root), buf, [&] {
      return ncclBroadcast(buf.data, buf.data, buf.count, nccl_type(buf.type), root, g_->comm, g_->stream);
    });
  }

  Request ibarrier() override {
    // NCCL has no barrier: an all-reduce of one word completes only when every rank has joined.
    const ConstBufferView word{g_->barrier_word, ElementType::I32, 1, DeviceId::cuda(g_->device)};
    return run(OpDescription::of("barrier"), word, [&] {
      return ncclAllReduce(g_->barrier_word, g_->barrier_word, 1, ncclInt32, ncclSum, g_->comm, g_->stream);
    });
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    CADTRAIN_CHECK(color >= 0, "{}: split into \"{}\": color {} must be >= 0", g_->where(), name, color);
    check_cuda(cudaSetDevice(g_->device), g_->where());
    auto part = std::make_shared<NcclGroup>();
    part->device = g_->device;
    part->name = name;
    part->watchdog = g_->watchdog;
    check_nccl(ncclCommSplit(g_->comm, color, key, &part->comm, nullptr), g_->where() + ": split into \"" + name + "\"");
    finish_group(*part);
    // World ranks of the members: gathered over the new communicator through device memory.
    int* words = nullptr;
    check_cuda(cudaMalloc(&words, sizeof(int) * static_cast<size_t>(part->size + 1)), part->where());
    const int mine = g_->watchdog->identity().world_rank;
    check_cuda(cudaMemcpy(words + part->size, &mine, sizeof(int), cudaMemcpyHostToDevice), part->where());
    const ncclResult_t rc = ncclAllGather(words + part->size, words, 1, ncclInt32, part->comm, part->stream);
    part->world_ranks.resize(static_cast<size_t>(part->size));
    const cudaError_t sync = rc == ncclSuccess ? cudaStreamSynchronize(part->stream) : cudaSuccess;
    const cudaError_t copy = rc == ncclSuccess && sync == cudaSuccess
                                 ? cudaMemcpy(part->world_ranks.data(), words, sizeof(int) * part->world_ranks.size(),
                                              cudaMemcpyDeviceToHost)
                                 : cudaSuccess;
    cudaFree(words);
    check_nccl(rc, part->where());
    check_cuda(sync, part->where());
    check_cuda(copy, part->where());
    return std::make_unique<NcclCommunicator>(std::move(part));
  }

  static void finish_group(NcclGroup& g) {
    check_nccl(ncclCommUserRank(g.comm, &g.rank), g.where());
    check_nccl(ncclCommCount(g.comm, &g.size), g.where());
    check_cuda(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking), g.where());
    check_cuda(cudaMalloc(&g.barrier_word, sizeof(int)), g.where());
    check_cuda(cudaMemset(g.barrier_word, 0, sizeof(int)), g.where());
  }

 private:
  template <typename Enqueue>
  Request run(OpDescription d, ConstBufferView buf, Enqueue&& enqueue) {
    check_cuda(cudaSetDevice(g_->device), g_->where());
    d.buffer = buf;
    d.comm = &g_->name;
    d.comm_size = g_->size;
    d.context = g_->watchdog->context();
    auto op = std::make_unique<NcclOp>(g_, std::move(d));
    check_nccl(enqueue(), g_->where());
    op->record();
    return Request(std::move(op));
  }

  void check_buf(ConstBufferView buf, const char* what) const {
    CADTRAIN_CHECK(buf.device == DeviceId::cuda(g_->device),
                   "{}: {}: the NCCL communicator of device cuda:{} takes buffers on that device, not {}", g_->where(),
                   what, g_->device, buf.describe());
    CADTRAIN_CHECK(buf.data != nullptr || buf.count == 0, "{}: {}: null buffer", g_->where(), what);
  }
  void check_pair(ConstBufferView send, ConstBufferView recv, const char* what) const {
    check_buf(send, what);
    check_buf(recv, what);
    CADTRAIN_CHECK(send.type == recv.type, "{}: {}: send is {} but recv is {}", g_->where(), what, send.describe(),
                   recv.describe());
  }
  void check_peer(int r) const {
    CADTRAIN_CHECK(r >= 0 && r < g_->size, "{}: rank {} is out of range [0, {})", g_->where(), r, g_->size);
  }

  std::shared_ptr<NcclGroup> g_;
};

}  // namespace

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    if (why != nullptr) *why = cudaGetErrorString(rc);
    return 0;
  }
  if (n == 0 && why != nullptr) *why = "no CUDA device";
  return n;
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device, const std::string& name) {
  const std::string where = fmt::format("{}: creating NCCL communicator \"{}\" on cuda:{}",
                                        bootstrap.watchdog().identity().describe(), name, device);
  CADTRAIN_CHECK(bootstrap.memory() == DeviceId::Kind::HOST, "{}: the bootstrap communicator must take host buffers",
                 where);
  // Rank 0 makes the id; the others receive it over the bootstrap (MPI) communicator.
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), where);
  bootstrap.broadcast(BufferView{&id, ElementType::U8, sizeof(id), DeviceId::host()}, 0);
  check_cuda(cudaSetDevice(device), where);
  auto g = std::make_shared<NcclGroup>();
  g->device = device;
  g->name = name;
  g->watchdog = bootstrap.shared_watchdog();
  check_nccl(ncclCommInitRank(&g->comm, bootstrap.size(), id, bootstrap.rank()), where);
  NcclCommunicator::finish_group(*g);
  CADTRAIN_CHECK(g->rank == bootstrap.rank() && g->size == bootstrap.size(), "{}: NCCL placed rank {} of {} as {} of {}",
                 where, bootstrap.rank(), bootstrap.size(), g->rank, g->size);
  g->world_ranks.resize(static_cast<size_t>(g->size));
  for (int r = 0; r < g->size; ++r) g->world_ranks[static_cast<size_t>(r)] = bootstrap.world_rank(r);
  return std::make_unique<NcclCommunicator>(std::move(g));
}

}  // namespace cadtrain::parallel
