// The fuzz input as a file: the dataset and checkpoint readers take paths (HDF5 opens files), so
// each input is written to one per-process scratch file first.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

namespace cadtrain::fuzz {

inline const std::string& scratch_path() {
  static const std::string path = std::string(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") +
                                  "/cadtrain_fuzz_" + std::to_string(getpid()) + ".h5";
  return path;
}

inline const std::string& write_input(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

}  // namespace cadtrain::fuzz
