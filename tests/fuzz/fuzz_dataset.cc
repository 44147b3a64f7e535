// Fuzzes the dataset validator: Dataset::open on arbitrary bytes, then reads (bounded) of every
// part it accepted. Any exception but cadtrain::Error, a crash, a hang or a huge allocation is a
// finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/error.h"
#include "data/dataset.h"
#include "fuzz_input_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = cadtrain::fuzz::write_input(data, size);
  try {
    const auto ds = cadtrain::data::Dataset::open(path);
    const uint64_t n = std::min<uint64_t>(ds.num_tokens(), uint64_t{1} << 16);
    std::vector<uint32_t> tokens(n);
    ds.read_tokens(0, n, tokens.data());
    if (ds.has_answer_mask()) {
      std::vector<uint8_t> mask(n);
      ds.read_answer_mask(0, n, mask.data());
    }
    for (uint64_t d = 0; d < std::min<uint64_t>(ds.num_docs(), 64); ++d) (void)ds.read_doc(d);
  } catch (const cadtrain::Error&) {
  }
  return 0;
}
