// An exclusive lock on a run directory, so that two `cadtrain train` processes never write the
// same run (metrics, checkpoints, pruning) at once. It is an flock() on "<dir>/train.lock": the
// kernel releases it when the process dies, even by kill -9, so a crashed run never leaves the
// directory locked. The file itself stays behind and means nothing without the lock.
#pragma once

#include <string>

namespace cadtrain::trainer {

class RunLock {
 public:
  // Creates dir if needed and takes the lock, or throws naming the directory and the pid of the
  // process holding it. `what` says what the directory is ("run directory", "checkpoint directory").
  RunLock(const std::string& dir, const std::string& what);
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock();

 private:
  int fd_ = -1;
};

// Creates dir (and its parents) or throws naming it and what is in the way (a file, a
// permission); `what` names the directory's role in the message.
void ensure_directory(const std::string& dir, const std::string& what);

}  // namespace cadtrain::trainer
