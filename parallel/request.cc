// Request and the deadline logic of PendingOp (parallel/communicator.h, parallel/pending_op.h).
#include <sched.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "common/clock.h"
#include "parallel/communicator.h"
#include "parallel/pending_op.h"

namespace cadtrain::parallel {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::SUM: return "sum";
    case ReduceOp::MAX: return "max";
    case ReduceOp::MIN: return "min";
  }
  return "?";
}

PendingOp::PendingOp(std::shared_ptr<Watchdog> watchdog, OpDescription description)
    : watchdog_(std::move(watchdog)), description_(std::move(description)), start_s_(now_seconds()) {}

bool PendingOp::poll() {
  if (done_) return true;
  CADTRAIN_CHECK(!timed_out_, "{} was already reported as timed out", description_.describe());
  done_ = progress();
  return done_;
}

void PendingOp::fail_timeout(double waited_s) {
  timed_out_ = true;
  on_timeout();
  const std::string message = watchdog_->timeout_message(description_, waited_s, waiting_for(), knows_arrivals());
  watchdog_->publish_timed_out(message);
  throw CommTimeout(message);
}

bool PendingOp::test() {
  if (poll()) return true;
  const double waited = now_seconds() - start_s_;
  if (waited > watchdog_->timeout_s()) fail_timeout(waited);
  return false;
}

void PendingOp::wait() {
  // Spin for a moment (most operations finish in microseconds), then poll yielding the core (a
  // large message needs both ranks to progress MPI several times, so sleeping here would cost a
  // sleep per protocol step), and only after kYieldS sleep between polls, so that ranks blocked
  // for long leave the cores to the ranks still computing. The SIGTERM report is written once the
  // wait lasts, and again when the missing ranks change.
  constexpr double kSpinS = 2e-5, kYieldS = 1e-2, kPublishAfterS = 1e-3;
  const double deadline = start_s_ + watchdog_->timeout_s();
  const double wait_start = now_seconds();
  bool published = false;
  size_t published_missing = 0;
  double next_check = wait_start + kPublishAfterS;
  long sleep_ns = 1000;
  while (!poll()) {
    const double now = now_seconds();
    if (now > deadline) fail_timeout(now - start_s_);
    if (now - wait_start < kSpinS) continue;
    if (now > next_check) {
      next_check = now + kPublishAfterS;
      const auto missing = waiting_for();
      if (!published || missing.size() != published_missing) {
        watchdog_->publish_in_flight(description_, missing, knows_arrivals());
        published = true;
        published_missing = missing.size();
      }
    }
    if (now - wait_start < kYieldS) {
      sched_yield();
      continue;
    }
    const timespec pause = {0, sleep_ns};
    nanosleep(&pause, nullptr);
    sleep_ns = std::min(sleep_ns * 2, 1000000L);
  }
  if (published) watchdog_->clear_in_flight();
}

Request::Request() = default;
Request::Request(std::unique_ptr<PendingOp> op) : op_(std::move(op)) {}
Request::Request(Request&&) noexcept = default;

Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    Request dropped(std::move(*this));  // waits for the operation this request held
    op_ = std::move(other.op_);
  }
  return *this;
}

Request::~Request() {
  if (!op_ || op_->done() || op_->timed_out()) return;
  // While an exception unwinds (a timeout elsewhere) the job is ending: do not wait again.
  if (std::uncaught_exceptions() > 0) return;
  // The buffers of an operation must outlive it; waiting here keeps that true when a caller
  // drops a request. A timeout here cannot be thrown out of a destructor: the job ends instead.
  try {
    op_->wait();
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}\n", e.what());
    std::fflush(stderr);
    std::abort();
  }
}

bool Request::test() { return !op_ || op_->test(); }
void Request::wait() {
  if (op_) op_->wait();
}
bool Request::done() const { return !op_ || op_->done(); }

void wait_all(std::span<Request> requests) {
  for (auto& r : requests) r.wait();
}

}  // namespace cadtrain::parallel
