// Run-directory lock (see run_lock.h).
#include "trainer/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>

#include "common/durable_file.h"  // errno_text
#include "common/error.h"

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;

// The pid the holder wrote into the lock file, for the message ("" when unreadable).
std::string holder_pid(int fd) {
  char buffer[32] = {};
  const ssize_t n = ::pread(fd, buffer, sizeof(buffer) - 1, 0);
  if (n <= 0) return "";
  std::string text(buffer, static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text.find_first_not_of("0123456789") == std::string::npos ? text : "";
}

}  // namespace

void ensure_directory(const std::string& dir, const std::string& what) {
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  if (!ec && fs::exists(status)) {
    if (!fs::is_directory(status)) fail("{} {} exists and is not a directory", what, dir);
    return;
  }
  fs::create_directories(dir, ec);
  if (ec) {
    // create_directories reports "File exists" when a parent is a file: name that parent instead.
    for (fs::path p = fs::path(dir).parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path()) {
      std::error_code stat_ec;
      if (fs::exists(p, stat_ec) && !fs::is_directory(p, stat_ec)) {
        fail("cannot create {} {}: {} is a file, not a directory", what, dir, p.string());
      }
    }
    fail("cannot create {} {}: {}", what, dir, ec.message());
  }
}

RunLock::RunLock(const std::string& dir, const std::string& what) {
  ensure_directory(dir, what);
  const std::string path = (fs::path(dir) / "train.lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open lock file {}: {}", path, errno_text(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    const std::string pid = holder_pid(fd_);
    ::close(fd_);
    fd_ = -1;
    if (error == EWOULDBLOCK) {
      fail("{} {} is in use by another cadtrain train{} (lock {}); wait for it to finish or use another run name",
           what, dir, pid.empty() ? "" : " (pid " + pid + ")", path);
    }
    fail("cannot lock {}: {}", path, errno_text(error));
  }
  // Informational only: the lock is the flock, not the file's content.
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) {
    [[maybe_unused]] const ssize_t n = ::pwrite(fd_, pid.data(), pid.size(), 0);
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

}  // namespace cadtrain::trainer
