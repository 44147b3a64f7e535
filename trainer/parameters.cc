// ParameterSet bookkeeping (see parameters.h).
#include "trainer/parameters.h"

#include "common/error.h"
#include "kernels/backend.h"

namespace cadtrain::trainer {

size_t ParameterSet::add(const std::string& name, std::vector<int64_t> shape) {
  CADTRAIN_CHECK(params_ == nullptr, "parameter {} declared after allocation", name);
  size_t numel = 1;
  for (const int64_t d : shape) numel *= static_cast<size_t>(d);
  // Offsets aligned to 16 floats (64 bytes) so every tensor starts on a cache line.
  const size_t offset = (total_ + 15) / 16 * 16;
  infos_.push_back(ParamInfo{name, std::move(shape), offset, numel, true});
  total_ = offset + numel;
  return infos_.size() - 1;
}

void ParameterSet::allocate(kernels::Backend& backend) {
  backend_ = &backend;
  params_ = backend.alloc(total_);
  grads_ = backend.alloc(total_);
}

ParameterSet::~ParameterSet() {
  if (backend_ != nullptr) {
    backend_->free(params_);
    backend_->free(grads_);
  }
}

size_t ParameterSet::index_of(const std::string& name) const {
  for (size_t i = 0; i < infos_.size(); ++i) {
    if (infos_[i].name == name) return i;
  }
  fail("the model has no parameter named {}", name);
}

}  // namespace cadtrain::trainer
