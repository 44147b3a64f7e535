// Communicator: point-to-point and collective communication among the ranks of one group, the
// one interface the data-parallel, ring/TokenRing and attention-server code is written against.
// Backends: MPI for host buffers (parallel/mpi_communicator.h), NCCL for CUDA buffers
// (parallel/nccl/nccl_communicator.h). Interface version 1.
//
// Every operation is non-blocking: it starts the work and returns a Request; compute can run
// while it is in flight and Request::test()/wait() complete it. The blocking forms below are
// `start(...).wait()`. Every buffer is a typed view (common/buffer_view.h): counts are elements
// of the view's element type, never bytes. Operations are collective over the communicator
// unless marked point-to-point: every rank calls the same collectives in the same order.
//
// Reductions are deterministic: element i of a sum is ((x_0[i] + x_1[i]) + x_2[i]) + ... in rank
// order, the same bits on every rank and in every run on the same layout (MPI backend; NCCL
// within one NCCL version and algorithm).
//
// Watchdog: an operation that does not complete within the timeout (parallel.timeout_s) makes
// test()/wait() throw CommTimeout naming the operation, the caller's step/layer/phase
// (OpContext), the ranks that did not arrive, and this rank's host and pid (parallel/watchdog.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/buffer_view.h"
#include "parallel/watchdog.h"

namespace cadtrain::parallel {

enum class ReduceOp : uint8_t { SUM, MAX, MIN };
std::string_view reduce_op_name(ReduceOp op);

class PendingOp;  // what a backend implements for one operation in flight (parallel/pending_op.h)

// A handle on one operation in flight. Move-only. A default-constructed Request is complete.
// Dropping an incomplete Request waits for it (buffers must outlive their operation).
class Request {
 public:
  Request();
  explicit Request(std::unique_ptr<PendingOp> op);
  Request(Request&&) noexcept;
  Request& operator=(Request&&) noexcept;
  ~Request();

  // Advances the operation without blocking; true once it has completed (buffers may be used).
  // Throws CommTimeout when the operation has been in flight longer than the timeout.
  bool test();
  // Blocks until the operation completes; throws CommTimeout when it does not within the timeout.
  void wait();
  bool done() const;

 private:
  std::unique_ptr<PendingOp> op_;
};

// Waits for every request, in order.
void wait_all(std::span<Request> requests);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's name in errors ("world", "dp", "cp 1").
  virtual const std::string& name() const = 0;
  // Rank r of this communicator in the world communicator.
  virtual int world_rank(int r) const = 0;
  // The memory this backend's buffers live in (MPI: host; NCCL: CUDA).
  virtual DeviceId::Kind memory() const = 0;
  // Timeout, this rank's identity and the caller's context; shared by all communicators of a job.
  Watchdog& watchdog() const { return *shared_watchdog(); }
  virtual std::shared_ptr<Watchdog> shared_watchdog() const = 0;

  // Point-to-point. Tags are in [0, 32767]; a message matches a receive of the same source, tag
  // and communicator, in order. The received message must have exactly buf.count elements of
  // buf.type (a mismatch is an error naming both ranks).
  virtual Request isend(ConstBufferView buf, int dst, int tag) = 0;
  virtual Request irecv(BufferView buf, int src, int tag) = 0;

  // recv = op over ranks of send; send.count == recv.count. In place when send and recv alias.
  virtual Request iall_reduce(ConstBufferView send, BufferView recv, ReduceOp op) = 0;
  // recv = block rank() of (op over ranks of send); send.count == size() * recv.count.
  virtual Request ireduce_scatter(ConstBufferView send, BufferView recv, ReduceOp op) = 0;
  // recv = send of rank 0, send of rank 1, ...; recv.count == size() * send.count.
  virtual Request iall_gather(ConstBufferView send, BufferView recv) = 0;
  // Sends send_counts[j] elements to rank j and receives recv_counts[j] from rank j; blocks are
  // packed in rank order (displacements are the prefix sums). Zero counts are allowed. Each
  // recv_counts[j] must equal rank j's send_counts[rank()] (checked, error names both ranks).
  virtual Request iall_to_all_v(ConstBufferView send, std::span<const size_t> send_counts, BufferView recv,
                                std::span<const size_t> recv_counts) = 0;
  // buf of every rank = buf of root.
  virtual Request ibroadcast(BufferView buf, int root) = 0;
  virtual Request ibarrier() = 0;

  // Sub-communicator of the ranks passing the same color, ordered by key (then by rank); `name`
  // names it in errors. Collective over this communicator.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

  // Blocking forms.
  void send(ConstBufferView buf, int dst, int tag) { isend(buf, dst, tag).wait(); }
  void recv(BufferView buf, int src, int tag) { irecv(buf, src, tag).wait(); }
  void all_reduce(BufferView buf, ReduceOp op) { iall_reduce(buf, buf, op).wait(); }
  void reduce_scatter(ConstBufferView send, BufferView recv, ReduceOp op) { ireduce_scatter(send, recv, op).wait(); }
  void all_gather(ConstBufferView send, BufferView recv) { iall_gather(send, recv).wait(); }
  void all_to_all_v(ConstBufferView send, std::span<const size_t> send_counts, BufferView recv,
                    std::span<const size_t> recv_counts) {
    iall_to_all_v(send, send_counts, recv, recv_counts).wait();
  }
  void broadcast(BufferView buf, int root) { ibroadcast(buf, root).wait(); }
  void barrier() { ibarrier().wait(); }
};

}  // namespace cadtrain::parallel
