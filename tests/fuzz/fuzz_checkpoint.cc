// Fuzzes the checkpoint validator: read_checkpoint_state and verify_checkpoint (every tensor read
// and checksummed) on arbitrary bytes. Any exception but cadtrain::Error, a crash or a huge
// allocation is a finding.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "fuzz_input_file.h"
#include "trainer/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = cadtrain::fuzz::write_input(data, size);
  try {
    (void)cadtrain::trainer::read_checkpoint_state(path);
  } catch (const cadtrain::Error&) {
  }
  try {
    (void)cadtrain::trainer::verify_checkpoint(path);
  } catch (const cadtrain::Error&) {
  }
  return 0;
}
