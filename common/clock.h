// Wall-clock seconds from a monotonic clock, for step timings and phase breakdowns.
#pragma once

#include <chrono>

namespace cadtrain {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace cadtrain
