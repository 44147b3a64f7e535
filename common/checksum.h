// CRC-64 (ECMA-182 polynomial, reflected, as in xz): detects every burst of up to 64 flipped bits
// and any odd number of flips, for metadata that HDF5 itself stores without a checksum.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace cadtrain {

class Crc64 {
 public:
  void update(std::string_view bytes) {
    for (const char c : bytes) crc_ = table()[(crc_ ^ static_cast<uint8_t>(c)) & 0xff] ^ (crc_ >> 8);
  }
  // Little-endian, so that a file written on one machine verifies on any other.
  void update_u64(uint64_t value) {
    char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
    update(std::string_view(bytes, 8));
  }
  uint64_t value() const { return ~crc_; }

 private:
  static const std::array<uint64_t, 256>& table() {
    static const std::array<uint64_t, 256> t = [] {
      std::array<uint64_t, 256> out{};
      for (uint64_t i = 0; i < 256; ++i) {
        uint64_t v = i;
        for (int bit = 0; bit < 8; ++bit) v = (v & 1) ? (v >> 1) ^ 0xC96C5795D7870F42ULL : v >> 1;
        out[i] = v;
      }
      return out;
    }();
    return t;
  }
  uint64_t crc_ = ~uint64_t{0};
};

}  // namespace cadtrain
