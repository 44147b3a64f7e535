// PendingOp: what a communicator backend implements for one operation in flight, and the deadline
// logic every backend shares (Request forwards to it). Internal to parallel/.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "parallel/watchdog.h"

namespace cadtrain::parallel {

class PendingOp {
 public:
  PendingOp(std::shared_ptr<Watchdog> watchdog, OpDescription description);
  PendingOp(const PendingOp&) = delete;
  PendingOp& operator=(const PendingOp&) = delete;
  virtual ~PendingOp() = default;

  // Progress once; throws CommTimeout past the deadline. True when complete.
  bool test();
  // Progress until complete, yielding the core between polls; throws CommTimeout past the deadline.
  void wait();
  bool done() const { return done_; }
  bool timed_out() const { return timed_out_; }

 protected:
  // Backend: advances the operation without blocking; true once it has completed. Throws Error on
  // a failure (a size mismatch, a backend error).
  virtual bool progress() = 0;
  // Backend: (communicator rank, world rank) of every peer whose part has not arrived.
  virtual std::vector<std::pair<int, int>> waiting_for() const = 0;
  // Backend: false when it cannot tell which peers arrived (NCCL); waiting_for() is then unused.
  virtual bool knows_arrivals() const { return true; }
  // Backend: called once when the deadline passed, before CommTimeout is thrown.
  virtual void on_timeout() {}

 private:
  bool poll();
  [[noreturn]] void fail_timeout(double waited_s);

  std::shared_ptr<Watchdog> watchdog_;
  OpDescription description_;
  double start_s_;
  bool done_ = false;
  bool timed_out_ = false;
};

}  // namespace cadtrain::parallel
