// cadtrain::Error: the one exception type library code throws. Binaries catch it and decide to
// exit; library code never calls exit(). Messages name the file, field, tensor or rank at fault.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace cadtrain {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Runs fn(); an Error escaping it is rethrown with "context: " prepended, so that a low-level
// message ("offset 7 < offset 6") reaches the user as "data.h5: /doc_offsets: offset 7 < ...".
template <typename Fn>
decltype(auto) with_context(const std::string& context, Fn&& fn) {
  try {
    return std::forward<Fn>(fn)();
  } catch (const Error& e) {
    throw Error(context + ": " + e.what());
  }
}

}  // namespace cadtrain

// Checks an invariant; on failure throws Error naming the condition and source location.
#define CADTRAIN_CHECK(cond, ...)                                                              \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      throw ::cadtrain::Error(fmt::format("{} ({}:{}: check `{}` failed)",                     \
                                          fmt::format(__VA_ARGS__), __FILE__, __LINE__, #cond)); \
    }                                                                                          \
  } while (0)
