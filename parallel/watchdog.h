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

// One operation as the watchdog describes it; formatted only when a report is needed.
struct OpDescription {
  std::string op;         // "all_reduce", "send to 2 (tag 5)"
  ConstBufferView buffer; // the buffer it moves (its description, never its data, is used)
  std::string comm;       // communicator name
  int comm_size = 0;
  OpContext context;      // captured when the operation starts

  // "all_reduce of float32 x 1024 on host on communicator \"dp\" (3 ranks)"
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

  // The CommTimeout message. `waiting_for` holds (communicator rank, world rank) pairs.
  std::string timeout_message(const OpDescription& op, double waited_s,
                              const std::vector<std::pair<int, int>>& waiting_for) const;
  // Makes `op` the operation reported if SIGTERM arrives now (see install_termination_report).
  void publish_in_flight(const OpDescription& op, const std::vector<std::pair<int, int>>& waiting_for) const;
  void clear_in_flight() const;
  // Makes the SIGTERM report say that this rank already reported a timeout (it is ending the job).
  void publish_timed_out() const;

 private:
  double timeout_s_;
  RankIdentity identity_;
  OpContext context_;
};

// Sets the context fields it is given for its scope, restoring the previous context after.
class ScopedOpContext {
 public:
  ScopedOpContext(Watchdog& watchdog, OpContext context) : watchdog_(watchdog), saved_(watchdog.context()) {
    watchdog_.set_context(std::move(context));
  }
  ScopedOpContext(const ScopedOpContext&) = delete;
  ScopedOpContext& operator=(const ScopedOpContext&) = delete;
  ~ScopedOpContext() { watchdog_.set_context(std::move(saved_)); }

 private:
  Watchdog& watchdog_;
  OpContext saved_;
};

// Installs a SIGTERM handler that writes "<identity>: ended by SIGTERM (the launcher ends the job
// when a rank dies or aborts) while <op in flight>" to stderr and exits with status 143. The report
// lives in a process-wide buffer because a signal handler can reach nothing else.
void install_termination_report(const RankIdentity& identity);

}  // namespace cadtrain::parallel
