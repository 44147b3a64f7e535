// SIGINT and SIGTERM during training: the first one asks the loop to stop at the next step
// boundary (checkpoint written, files closed, no temporary file left); a second one ends the
// process at once with the signal's default action.
#pragma once

namespace cadtrain::trainer {

// Installs the handlers for its lifetime and restores the previous ones after.
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
