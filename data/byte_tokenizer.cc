// The byte tokenizer: token id = byte value, so any byte string (NUL, invalid UTF-8) round-trips.
#include <cstdint>    // uint32_t
#include <memory>     // std::unique_ptr
#include <span>       // std::span
#include <string>     // std::string
#include <string_view>
#include <vector>

#include "common/error.h"  // cadtrain::fail
#include "data/tokenizer.h"

namespace cadtrain::data {

void check_token_ids(std::span<const uint32_t> ids, uint32_t vocab_size) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab_size) {
      fail("token id {} at position {} is out of range (vocab_size {})", ids[i], i, vocab_size);
    }
  }
}

namespace {

constexpr uint32_t kByteVocabSize = 256;

class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<uint32_t> encode(std::string_view text) const override {
    std::vector<uint32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  std::string decode(std::span<const uint32_t> ids) const override {
    check_token_ids(ids, kByteVocabSize);
    std::string text(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) text[i] = static_cast<char>(ids[i]);
    return text;
  }

  uint32_t vocab_size() const override { return kByteVocabSize; }
  std::string name() const override { return "byte"; }
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

}  // namespace cadtrain::data
