// Publishing a finished file durably: fsync it, rename it over its final name, fsync the
// directory. A crash at any point leaves either the old file or the new one, never a mix.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>

#include "common/error.h"

namespace cadtrain {

inline std::string errno_text(int error) { return std::error_code(error, std::generic_category()).message(); }

// fsync through a fresh descriptor: libraries such as HDF5 do not expose theirs, and fsync on
// any descriptor of a file flushes it. flags: O_RDONLY for a file, O_RDONLY | O_DIRECTORY for a
// directory (whose fsync makes a rename in it durable).
inline void fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) fail("cannot open {} to fsync: {}", path, errno_text(errno));
  const int status = ::fsync(fd);
  const int fsync_errno = errno;
  ::close(fd);
  if (status != 0) fail("cannot fsync {}: {}", path, errno_text(fsync_errno));
}

// Makes the closed file `tmp` durable and renames it to `final_path`.
inline void publish_file(const std::string& tmp, const std::string& final_path) {
  fsync_path(tmp, O_RDONLY);
  std::error_code ec;
  std::filesystem::rename(tmp, final_path, ec);
  if (ec) fail("cannot rename {} to {}: {}", tmp, final_path, ec.message());
  const std::filesystem::path dir = std::filesystem::path(final_path).parent_path();
  fsync_path(dir.empty() ? "." : dir.string(), O_RDONLY | O_DIRECTORY);
}

}  // namespace cadtrain
