// BufferView: a typed, non-owning view of memory (data, element type, element count, device),
// the one currency of the compute backends and the communicators. A buffer handed to a
// collective carries its element count and type, never a byte count to be reinterpreted.
//
//   std::vector<float> grad(n);
//   comm.all_reduce(host_view(grad), ReduceOp::SUM);            // float32 x n on the host
//   BufferView g{dev_ptr, ElementType::BF16, n, DeviceId::cuda(0)};  // device memory
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/error.h"

namespace cadtrain {

// Element types a buffer can hold. BF16/F16 are 16-bit floats stored as raw bits on the host.
enum class ElementType : uint8_t { F32, F64, BF16, F16, I32, I64, U32, U64, U8 };

constexpr size_t element_size(ElementType t) {
  switch (t) {
    case ElementType::F64:
    case ElementType::I64:
    case ElementType::U64: return 8;
    case ElementType::F32:
    case ElementType::I32:
    case ElementType::U32: return 4;
    case ElementType::BF16:
    case ElementType::F16: return 2;
    case ElementType::U8: return 1;
  }
  return 0;
}

constexpr std::string_view element_name(ElementType t) {
  switch (t) {
    case ElementType::F32: return "float32";
    case ElementType::F64: return "float64";
    case ElementType::BF16: return "bfloat16";
    case ElementType::F16: return "float16";
    case ElementType::I32: return "int32";
    case ElementType::I64: return "int64";
    case ElementType::U32: return "uint32";
    case ElementType::U64: return "uint64";
    case ElementType::U8: return "uint8";
  }
  return "?";
}

// The ElementType of a C++ element type; a compile error for types without one.
template <typename T>
constexpr ElementType element_type_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return ElementType::F32;
  else if constexpr (std::is_same_v<U, double>) return ElementType::F64;
  else if constexpr (std::is_same_v<U, int32_t>) return ElementType::I32;
  else if constexpr (std::is_same_v<U, int64_t>) return ElementType::I64;
  else if constexpr (std::is_same_v<U, uint32_t>) return ElementType::U32;
  else if constexpr (std::is_same_v<U, uint64_t>) return ElementType::U64;
  else if constexpr (std::is_same_v<U, uint8_t>) return ElementType::U8;
  else static_assert(sizeof(U) == 0, "no ElementType for this C++ type");
}

// Where the memory lives: host memory, or the memory of CUDA device `index`.
struct DeviceId {
  enum class Kind : uint8_t { HOST, CUDA };
  Kind kind = Kind::HOST;
  int index = 0;

  static constexpr DeviceId host() { return {Kind::HOST, 0}; }
  static constexpr DeviceId cuda(int i) { return {Kind::CUDA, i}; }
  constexpr bool is_host() const { return kind == Kind::HOST; }
  friend constexpr bool operator==(DeviceId, DeviceId) = default;
  std::string name() const { return is_host() ? std::string("host") : "cuda:" + std::to_string(index); }
};

// A read-only view; BufferView converts to it.
struct ConstBufferView {
  const void* data = nullptr;
  ElementType type = ElementType::F32;
  size_t count = 0;
  DeviceId device = DeviceId::host();

  size_t bytes() const { return count * element_size(type); }
  // "float32 x 1024 on host", for error messages.
  std::string describe() const {
    return std::string(element_name(type)) + " x " + std::to_string(count) + " on " + device.name();
  }
  // Elements [offset, offset + n) of this view.
  ConstBufferView slice(size_t offset, size_t n) const {
    CADTRAIN_CHECK(offset <= count && n <= count - offset, "slice [{}, {}) of a {} buffer", offset, offset + n,
                   describe());
    return {static_cast<const std::byte*>(data) + offset * element_size(type), type, n, device};
  }
  // The elements as T; throws when T is not the view's element type.
  template <typename T>
  const T* as() const {
    CADTRAIN_CHECK(element_type_of<T>() == type, "buffer of {} read as {}", describe(),
                   element_name(element_type_of<T>()));
    return static_cast<const T*>(data);
  }
};

struct BufferView {
  void* data = nullptr;
  ElementType type = ElementType::F32;
  size_t count = 0;
  DeviceId device = DeviceId::host();

  size_t bytes() const { return count * element_size(type); }
  std::string describe() const { return ConstBufferView(*this).describe(); }
  operator ConstBufferView() const { return {data, type, count, device}; }
  BufferView slice(size_t offset, size_t n) const {
    CADTRAIN_CHECK(offset <= count && n <= count - offset, "slice [{}, {}) of a {} buffer", offset, offset + n,
                   describe());
    return {static_cast<std::byte*>(data) + offset * element_size(type), type, n, device};
  }
  template <typename T>
  T* as() const {
    CADTRAIN_CHECK(element_type_of<T>() == type, "buffer of {} read as {}", describe(),
                   element_name(element_type_of<T>()));
    return static_cast<T*>(data);
  }
};

// Views of host memory from typed spans (a std::vector converts to std::span).
template <typename T>
BufferView host_view(std::span<T> s) requires(!std::is_const_v<T>) {
  return {s.data(), element_type_of<T>(), s.size(), DeviceId::host()};
}
template <typename T>
ConstBufferView host_view(std::span<const T> s) {
  return {s.data(), element_type_of<T>(), s.size(), DeviceId::host()};
}
template <typename Container>
auto host_view(Container& c) -> decltype(host_view(std::span(c))) {
  return host_view(std::span(c));
}

}  // namespace cadtrain
