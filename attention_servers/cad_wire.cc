// CAD message descriptors (see cad_wire.h).
#include "attention_servers/cad_wire.h"

#include "common/error.h"

namespace cadtrain::attention_servers {

std::string wire_phase_name(WirePhase phase) {
  switch (phase) {
    case WirePhase::FORWARD_IN: return "forward dispatch";
    case WirePhase::FORWARD_OUT: return "forward return";
    case WirePhase::BACKWARD_IN: return "backward dispatch";
    case WirePhase::BACKWARD_OUT: return "backward return";
  }
  return "phase " + std::to_string(static_cast<uint64_t>(phase));
}

void append_descriptor(std::vector<uint64_t>& out, const WireHeader& h, std::span<const WireSegment> segments) {
  out.push_back(kWireMagic | kWireVersion << 32);
  out.push_back(h.sender);
  out.push_back(static_cast<uint64_t>(h.phase));
  out.push_back(h.layer);
  out.push_back(h.group);
  out.push_back(h.serial);
  out.push_back(segments.size());
  out.push_back(h.payload_floats);
  for (const WireSegment& s : segments) {
    out.push_back(s.kind);
    out.push_back(static_cast<uint64_t>(s.src_row0));
    out.push_back(static_cast<uint64_t>(s.rows));
    out.push_back(static_cast<uint64_t>(s.dst_row0));
  }
}

void check_descriptor(std::span<const uint64_t> words, int sender, const WireHeader& expected,
                      std::span<const WireSegment> segments, uint64_t payload_received) {
  const std::string what = "CAD " + wire_phase_name(expected.phase) + " descriptor from rank " +
                           std::to_string(sender) + " (layer " + std::to_string(expected.layer) + ", group " +
                           std::to_string(expected.group) + ")";
  if (words.size() < kWireHeaderWords) {
    fail("{}: {} words, shorter than the {}-word header", what, words.size(), kWireHeaderWords);
  }
  if ((words[0] & 0xffffffffu) != kWireMagic) fail("{}: bad magic {:#x}", what, words[0] & 0xffffffffu);
  if ((words[0] >> 32) != kWireVersion) {
    fail("{}: wire version {}, this build speaks version {}", what, words[0] >> 32, kWireVersion);
  }
  const auto field = [&](size_t i, uint64_t want, const char* name) {
    if (words[i] != want) fail("{}: {} is {}, the plan expects {}", what, name, words[i], want);
  };
  field(1, static_cast<uint64_t>(sender), "sender");
  field(2, static_cast<uint64_t>(expected.phase), "phase");
  field(3, expected.layer, "layer");
  field(4, expected.group, "group");
  field(5, expected.serial, "micro-batch serial");
  field(6, segments.size(), "segment count");
  field(7, expected.payload_floats, "payload floats");
  if (words.size() != descriptor_words(segments.size())) {
    fail("{}: {} words for {} segments (expected {})", what, words.size(), segments.size(),
         descriptor_words(segments.size()));
  }
  if (payload_received != expected.payload_floats) {
    fail("{}: {} payload floats arrived, the descriptor announces {}", what, payload_received, expected.payload_floats);
  }
  for (size_t i = 0; i < segments.size(); ++i) {
    const uint64_t* w = words.data() + kWireHeaderWords + kWireSegmentWords * i;
    const WireSegment got{w[0], static_cast<int64_t>(w[1]), static_cast<int64_t>(w[2]), static_cast<int64_t>(w[3])};
    if (!(got == segments[i])) {
      const WireSegment& e = segments[i];
      fail("{}: segment {} is (kind {}, src_row0 {}, rows {}, dst_row0 {}), the plan expects (kind {}, src_row0 {}, "
           "rows {}, dst_row0 {})",
           what, i, got.kind, got.src_row0, got.rows, got.dst_row0, e.kind, e.src_row0, e.rows, e.dst_row0);
    }
  }
}

}  // namespace cadtrain::attention_servers
