// The descriptor that heads every CAD message (trainer -> server and server -> trainer): a fixed
// binary layout of uint64 words, versioned, so that a receiver checks what it is about to read
// before it reads it (DESIGN section 5, "dispatch/return").
//
//   word 0   kWireMagic | kWireVersion << 32
//   word 1   sender world rank
//   word 2   WirePhase
//   word 3   layer
//   word 4   group (the scheduler plan of one nano-batch round, cad_step_plan.h)
//   word 5   serial (the micro-batch counter of prepare(): catches ranks out of step)
//   word 6   segments n
//   word 7   payload floats that follow in the float message
//   then n segments of 4 words: kind (0 QUERY, 1 KEY_VALUE), src_row0, rows, dst_row0
//
// Every rank computes the same plan, so a receiver knows exactly which descriptor it must get from
// each sender; check_descriptor() compares word by word and throws cadtrain::Error naming the
// sender and the first field that differs. It reads no word past the received count.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cadtrain::attention_servers {

constexpr uint64_t kWireMagic = 0x57444143;  // "CADW" read little-endian
constexpr uint64_t kWireVersion = 1;
constexpr size_t kWireHeaderWords = 8;
constexpr size_t kWireSegmentWords = 4;

enum class WirePhase : uint64_t {
  FORWARD_IN = 1,    // Q rows and K/V rows to a server
  FORWARD_OUT = 2,   // O and LSE back to the query owner
  BACKWARD_IN = 3,   // dO (and Q, O, LSE, K, V when resent)
  BACKWARD_OUT = 4,  // dQ, dK and dV back
};
std::string wire_phase_name(WirePhase phase);

struct WireSegment {
  uint64_t kind = 0;  // 0: query rows, 1: key/value rows (attention_servers::Dispatch::Kind)
  int64_t src_row0 = 0, rows = 0, dst_row0 = 0;
  friend bool operator==(const WireSegment&, const WireSegment&) = default;
};

struct WireHeader {
  uint64_t sender = 0;
  WirePhase phase = WirePhase::FORWARD_IN;
  uint64_t layer = 0, group = 0, serial = 0;
  uint64_t payload_floats = 0;
};

// Appends the descriptor of (header, segments) to `out`.
void append_descriptor(std::vector<uint64_t>& out, const WireHeader& header, std::span<const WireSegment> segments);

// Words a descriptor of n segments takes.
constexpr size_t descriptor_words(size_t segments) { return kWireHeaderWords + kWireSegmentWords * segments; }

// Checks the descriptor `words` received from world rank `sender` against the one the plan
// expects (`expected`, `segments`), and that `payload_received` floats arrived with it. Throws
// cadtrain::Error ("descriptor from rank 3: ...") on a short or long message, a wrong magic or
// version, or any field that differs.
void check_descriptor(std::span<const uint64_t> words, int sender, const WireHeader& expected,
                      std::span<const WireSegment> segments, uint64_t payload_received);

}  // namespace cadtrain::attention_servers
