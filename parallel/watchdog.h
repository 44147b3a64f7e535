// The communication watchdog: a deadline on every operation, and the report a rank gives when the
// job ends under it.
//
// - An operation in flight longer than parallel.timeout_s makes Request::test()/wait() throw
//   CommTimeout. Its message names this rank (world rank, host, pid), the operation and its
//   communicator, what the caller was doing (OpContext: step, layer, phase) and the ranks that
//   did not arrive, e.g.
//     rank 0/3 (host vm, pid 4242): all_reduce of float32 x 1024 on communicator "dp" (3 ranks)
//     did not complete within parallel.timeout_s = 2 s (step 7, layer 3, grad bucket 1); ranks
//     that did not arrive: 2 (world rank 2)
//   The binary prints it and calls MpiRuntime::abort_job(), which ends every rank of the job.
// - When the launcher ends the job (mpirun and srun send SIGTERM to the survivors when a rank dies
//   or aborts), the SIGTERM handler of install_termination_report() prints the same description
//   of the operation this rank is blocked in, so a rank killed with kill -9 still leaves a message
//   on every other rank naming where they were waiting and for whom.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/buffer_view.h"
#include "common/error.h"

namespace cadtrain::parallel {

// What the caller is doing, attached to every operation it starts (-1 / empty: unknown).
struct OpContext {
  int64_t step = -1;
  int32_t layer = -1;
  std::string phase;  // e.g. "backward grad bucket 2", "ring forward step 1"

  // "step 7, layer 3, grad bucket 1", or "" when nothing is known.
  std::string describe() const;
};

// Who this process is, for every message it prints.
struct RankIdentity {
  int world_rank = 0;
  int world_size = 1;
  std::string host;
  int pid = 0;

  // "rank 0/3 (host vm, pid 4242)"
  std::string describe() const;
  // This process's host name and pid with the given world rank and size.
  static RankIdentity of_this_process(int world_rank, int world_size);
};

// One operation as the watchdog describes it. Cheap to make (every operation makes one): the
// strings it points to are static or outlive the operation; the text is formatted only when a
// report is needed.
struct OpDescription {
  std::string_view op;           // "all_reduce", "send to", "broadcast from"
  std::string_view reduce;       // "sum", or empty
  int peer = -1, tag = -1;       // the peer/root and tag, when there is one
  ConstBufferView buffer;        // the buffer it moves (its description, never its data, is used)
  const std::string* comm = nullptr;  // communicator name
  int comm_size = 0;
  OpContext context;             // captured when the operation starts

  static OpDescription of(std::string_view op, std::string_view reduce = {}, int peer = -1, int tag = -1) {
    OpDescription d;
    d.op = op;
    d.reduce = reduce;
    d.peer = peer;
    d.tag = tag;
    return d;
  }
  // "all_reduce (sum) of float32 x 1024 on host on communicator \"dp\" (3 ranks)",
  // "send to rank 2 (tag 5) of ..."
  std::string describe() const;
};

// Thrown by Request::test()/wait() when an operation misses its deadline.
class CommTimeout : public Error {
 public:
  explicit CommTimeout(const std::string& what) : Error(what) {}
};

class Watchdog {
 public:
  Watchdog(double timeout_s, RankIdentity identity);

  double timeout_s() const { return timeout_s_; }
  const RankIdentity& identity() const { return identity_; }

  // The caller's context, captured by each operation at its start.
  const OpContext& context() const { return context_; }
  void set_context(OpContext context) { context_ = std::move(context); }
  void set_step(int64_t step) { context_.step = step; }
  void set_layer(int32_t layer) { context_.layer = layer; }

  // The CommTimeout message. `waiting_for` holds (communicator rank, world rank) pairs; with
  // known_arrivals false the backend cannot tell who is missing and the message says so.
  std::string timeout_message(const OpDescription& op, double waited_s,
                              const std::vector<std::pair<int, int>>& waiting_for, bool known_arrivals = true) const;
  // Makes `op` the operation reported if SIGTERM arrives now (see install_termination_report).
  void publish_in_flight(const OpDescription& op, const std::vector<std::pair<int, int>>& waiting_for,
                         bool known_arrivals = true) const;
  void clear_in_flight() const;
  // Makes the SIGTERM report the timeout message itself (SIGTERM may end this rank before the
  // caller has printed it).
  void publish_timed_out(const std::string& message) const;

 private:
  double timeout_s_;
  RankIdentity identity_;
  OpContext context_;
};

// Sets the context fields it is given (step >= 0, layer >= 0, a non-empty phase) for its scope,
// keeping the others (a model layer sets its layer, the step the trainer set stays), and restores
// the previous context after.
class ScopedOpContext {
 public:
  ScopedOpContext(Watchdog& watchdog, OpContext context) : watchdog_(watchdog), saved_(watchdog.context()) {
    OpContext merged = saved_;
    if (context.step >= 0) merged.step = context.step;
    if (context.layer >= 0) merged.layer = context.layer;
    if (!context.phase.empty()) merged.phase = std::move(context.phase);
    watchdog_.set_context(std::move(merged));
  }
  ScopedOpContext(const ScopedOpContext&) = delete;
  ScopedOpContext& operator=(const ScopedOpContext&) = delete;
  ~ScopedOpContext() { watchdog_.set_context(std::move(saved_)); }

 private:
  Watchdog& watchdog_;
  OpContext saved_;
};

// Installs a SIGTERM handler. While this rank waits in an operation it writes "<identity>: ended
// by SIGTERM (the launcher ends the job when a rank dies or aborts) while waiting in <op> (<step,
// layer>); ranks that had not arrived: <ranks>" to stderr and exits with status 143. Between
// operations it calls the handler installed before it (the trainer's graceful stop: finish the
// step, checkpoint), or, without one, reports and exits. The report lives in a process-wide
// buffer because a signal handler can reach nothing else.
void install_termination_report(const RankIdentity& identity);

}  // namespace cadtrain::parallel
