// ParameterSet: every trainable tensor of the model in one flat backend buffer, with a name,
// shape and offset each, and a gradient buffer of the same layout. One flat buffer keeps the
// optimizer, gradient norm, checkpoints and (later) all-reduce to one loop or one call.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cadtrain::kernels {
class Backend;
}

namespace cadtrain::trainer {

struct ParamInfo {
  std::string name;            // e.g. "layers.3.attn.wq"
  std::vector<int64_t> shape;  // e.g. {256, 256}
  size_t offset = 0;           // into the flat buffers, in floats
  size_t numel = 0;
  bool weight_decay = true;
};

class ParameterSet {
 public:
  // Declares a tensor; call before allocate(). Returns its index.
  size_t add(const std::string& name, std::vector<int64_t> shape);
  // Allocates params and grads (zeroed) on the backend.
  void allocate(kernels::Backend& backend);
  ~ParameterSet();

  const std::vector<ParamInfo>& infos() const { return infos_; }
  std::vector<ParamInfo>& infos() { return infos_; }
  const ParamInfo& info(size_t index) const { return infos_[index]; }
  size_t index_of(const std::string& name) const;  // throws if absent
  size_t total() const { return total_; }

  float* param(size_t index) { return params_ + infos_[index].offset; }
  const float* param(size_t index) const { return params_ + infos_[index].offset; }
  float* grad(size_t index) { return grads_ + infos_[index].offset; }
  float* params() { return params_; }
  float* grads() { return grads_; }
  const float* params() const { return params_; }

 private:
  std::vector<ParamInfo> infos_;
  size_t total_ = 0;
  kernels::Backend* backend_ = nullptr;
  float* params_ = nullptr;
  float* grads_ = nullptr;
};

}  // namespace cadtrain::trainer
