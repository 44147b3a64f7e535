// SIGINT and SIGTERM during training: the first one asks the loop to stop at the next step
// boundary (checkpoint written, files closed, no temporary file left); a second one ends the
// process at once with the signal's default action.
#pragma once

namespace cadtrain::trainer {

// Installs the handlers for its lifetime and restores the previous ones after. Nested instances
// share the outermost one's handlers: an MPI launch creates one before the communicator
// (parallel/watchdog.h: its SIGTERM report chains to the handler installed before it), and the
// training loop's own instance then changes nothing.
class StopSignals {
 public:
  StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  ~StopSignals();
  // The signal received so far (SIGINT or SIGTERM), or 0.
  static int received();
};

}  // namespace cadtrain::trainer
