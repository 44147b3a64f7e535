// RAII owners for HDF5 hid_t handles, the process-wide HDF5 lock, and HDF5 errors turned into
// cadtrain::Error, shared by the dataset files (data/) and checkpoints (trainer/). Link the
// cadtrain_hdf5 target to get HDF5's include path and library.
#pragma once

#include <hdf5.h>  // HDF5 C API (serial build)

#include <cstdint>      // uint32_t attributes
#include <mutex>        // std::recursive_mutex, std::unique_lock
#include <string>       // error messages
#include <string_view>  // names of datasets and attributes
#include <utility>      // std::exchange

#include "common/error.h"  // cadtrain::Error, fail()

namespace cadtrain::h5 {

// Object names of the dataset format (see data/dataset.h), shared by the reader and the writer.
inline constexpr const char* kTokens = "/tokens";
inline constexpr const char* kDocOffsets = "/doc_offsets";
inline constexpr const char* kDifficulty = "/difficulty";
inline constexpr const char* kAnswerMask = "/answer_mask";
inline constexpr const char* kVocabSize = "vocab_size";
inline constexpr const char* kTokenizer = "tokenizer";
inline constexpr const char* kTokenizerModel = "tokenizer_model";
inline constexpr const char* kFormatVersion = "format_version";
inline constexpr const char* kMaxToken = "max_token";

inline bool is_known_tokenizer(std::string_view name) {
  return name == "byte" || name == "sentencepiece";
}

// The serial HDF5 library keeps global state (open-object tables, the error stack) with no locking
// of its own, so every HDF5 call in the process goes through this one lock. It is recursive because
// handle destructors lock too and often run inside an already locked scope.
inline std::recursive_mutex& library_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

// Locks the library; the first lock also stops HDF5 printing its error stack to stderr, since
// failures are reported as cadtrain::Error instead (see error_message()).
[[nodiscard]] inline std::unique_lock<std::recursive_mutex> lock() {
  std::unique_lock guard(library_mutex());
  static const bool silenced = H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0;
  (void)silenced;
  return guard;
}

// The message of the innermost (first detected) error on the current HDF5 error stack, which
// says what actually went wrong ("truncated file", "Fletcher32 checksum") where the outer entries
// only repeat "can't read data". Clears the stack.
inline std::string error_message() {
  auto guard = lock();
  const hid_t stack = H5Eget_current_stack();
  if (stack < 0) return "unknown HDF5 error";
  std::string innermost;
  H5Ewalk2(
      stack, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* entry, void* out) -> herr_t {
        if (n == 0 && entry->desc != nullptr) *static_cast<std::string*>(out) = entry->desc;
        return 0;
      },
      &innermost);
  H5Eclose_stack(stack);
  return innermost.empty() ? "unknown HDF5 error" : innermost;
}

// Owns one hid_t and releases it with Close (H5Fclose, H5Dclose, ...) under the library lock.
template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closing cannot be reported from a destructor; a failed close of a read-only handle loses
  // nothing, and the writer checks its closes explicitly through close().
  void reset() noexcept {
    if (id_ >= 0) {
      auto guard = lock();
      Close(id_);
      id_ = H5I_INVALID_HID;
    }
  }
  // Closes now and throws on failure (for files being written, where close flushes data).
  void close(std::string_view what) {
    auto guard = lock();
    const hid_t id = std::exchange(id_, H5I_INVALID_HID);
    if (id >= 0 && Close(id) < 0) fail("{}: {}", what, error_message());
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

using File = Handle<H5Fclose>;
using Dataset = Handle<H5Dclose>;
using Space = Handle<H5Sclose>;
using Type = Handle<H5Tclose>;
using Plist = Handle<H5Pclose>;
using Attribute = Handle<H5Aclose>;

// Takes ownership of the result of an HDF5 call that returns a new handle, or throws
// "<what>: <innermost HDF5 message>" when the call failed. Call with the lock held.
template <typename H>
H own(hid_t id, std::string_view what) {
  if (id < 0) fail("{}: {}", what, error_message());
  return H(id);
}

// Throws "<what>: <innermost HDF5 message>" when an HDF5 status (herr_t or htri_t) is negative;
// returns it otherwise (so that htri_t results can be tested). Call with the lock held.
inline int check(int status, std::string_view what) {
  if (status < 0) fail("{}: {}", what, error_message());
  return status;
}

// File access properties for both reading and writing: file locking stays on where the file
// system supports it, but its absence (common on cluster file systems) is not an error.
inline Plist file_access_list() {
  auto fapl = own<Plist>(H5Pcreate(H5P_FILE_ACCESS), "cannot create file access list");
  check(H5Pset_file_locking(fapl.get(), true, true), "cannot set file locking");
  return fapl;
}

// A 1-D dataspace of n elements, or its [begin, begin + n) hyperslab when selecting in a file
// space. Both the reader and the writer move data in 1-D slabs.
inline Space space_1d(hsize_t n) {
  return own<Space>(H5Screate_simple(1, &n, nullptr), "cannot create dataspace");
}
inline void select_1d(const Space& space, hsize_t begin, hsize_t n) {
  check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &begin, nullptr, &n, nullptr),
        "cannot select hyperslab");
}

// Writes a scalar uint32 attribute on `object` (a file or group). Call with the lock held.
inline void write_u32_attribute(hid_t object, const char* name, uint32_t value) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto space = own<Space>(H5Screate(H5S_SCALAR), what);
  auto attr = own<Attribute>(H5Acreate2(object, name, H5T_STD_U32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  check(H5Awrite(attr.get(), H5T_NATIVE_UINT32, &value), what);
}

}  // namespace cadtrain::h5
