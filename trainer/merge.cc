// Model merging: the per-tensor methods and the streaming merge of checkpoint files (merge.h).
#include "trainer/merge.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>  // std::nth_element, std::find
#include <cmath>      // std::ceil, std::isfinite, std::fabs
#include <numeric>    // std::accumulate
#include <set>        // tensor names

#include "common/error.h"        // fail, with_context
#include "common/rng.h"          // dare's masks
#include "trainer/checkpoint.h"  // CheckpointReader, CheckpointWriter

namespace cadtrain::trainer {
namespace {

constexpr std::string_view kMethodNames[] = {"soup", "task_arithmetic", "ties", "dare"};

double weight_of(const MergeOptions& o, size_t i) { return o.weights.empty() ? 1.0 : o.weights[i]; }

// FNV-1a: a stable hash of the tensor name, so that each tensor's dare masks depend on its name
// and not on the order tensors are visited in.
uint64_t name_hash(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return h;
}

// Zeroes all but the `keep` entries of largest magnitude; equal magnitudes are kept in index
// order, so the result is a function of the values alone. scratch: n floats of workspace.
void trim_to_largest(std::span<float> t, size_t keep, std::vector<float>& scratch) {
  const size_t n = t.size();
  if (keep >= n) return;
  if (keep == 0) {
    std::fill(t.begin(), t.end(), 0.0f);
    return;
  }
  scratch.resize(n);
  for (size_t i = 0; i < n; ++i) scratch[i] = std::fabs(t[i]);
  // The keep-th largest magnitude.
  std::nth_element(scratch.begin(), scratch.begin() + static_cast<ptrdiff_t>(keep - 1), scratch.end(),
                   std::greater<float>());
  const float threshold = scratch[keep - 1];
  size_t above = 0;
  for (size_t i = 0; i < n; ++i) above += std::fabs(t[i]) > threshold ? 1 : 0;
  size_t ties_left = keep - above;
  for (size_t i = 0; i < n; ++i) {
    const float m = std::fabs(t[i]);
    if (m > threshold) continue;
    if (m == threshold && ties_left > 0) {
      --ties_left;
      continue;
    }
    t[i] = 0.0f;
  }
}

float sign_of(float x) { return x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f); }

void merge_soup(const MergeOptions& o, size_t m, const LoadModelTensor& load, std::span<float> out,
                std::vector<float>& model) {
  double total = 0;
  for (size_t i = 0; i < m; ++i) total += weight_of(o, i);
  std::fill(out.begin(), out.end(), 0.0f);
  for (size_t i = 0; i < m; ++i) {
    load(i, model);
    const auto w = static_cast<float>(weight_of(o, i) / total);
    for (size_t e = 0; e < out.size(); ++e) out[e] += w * model[e];
  }
}

// task_arithmetic and dare: out = b + scale * sum_i w_i t_i.
void merge_linear(const MergeOptions& o, std::string_view name, std::span<const float> base, size_t m,
                  const LoadModelTensor& load, std::span<float> out, std::vector<float>& model) {
  std::fill(out.begin(), out.end(), 0.0f);
  const bool dare = o.method == MergeMethod::kDare;
  const auto keep_scale = static_cast<float>(dare ? 1.0 / (1.0 - o.drop) : 1.0);
  for (size_t i = 0; i < m; ++i) {
    load(i, model);
    const auto w = static_cast<float>(weight_of(o, i));
    if (dare) {
      Rng rng(o.seed ^ name_hash(name), i);
      for (size_t e = 0; e < out.size(); ++e) {
        if (rng.uniform() >= o.drop) out[e] += w * keep_scale * (model[e] - base[e]);
      }
    } else {
      for (size_t e = 0; e < out.size(); ++e) out[e] += w * (model[e] - base[e]);
    }
  }
  const auto scale = static_cast<float>(o.scale);
  for (size_t e = 0; e < out.size(); ++e) out[e] = base[e] + scale * out[e];
}

// Two passes over the models (elect the sign, then average the agreeing entries), reading each
// model twice instead of holding all their task vectors.
void merge_ties(const MergeOptions& o, std::span<const float> base, size_t m, const LoadModelTensor& load,
                std::span<float> out, std::vector<float>& model) {
  const size_t n = out.size();
  const auto keep = static_cast<size_t>(std::ceil(o.density * static_cast<double>(n) - 1e-9));
  std::vector<float> scratch;
  auto trimmed_task = [&](size_t i) {
    load(i, model);
    for (size_t e = 0; e < n; ++e) model[e] -= base[e];
    trim_to_largest(model, keep, scratch);
  };
  std::vector<float> elected(n, 0.0f);  // sum_i w_i t_i, then its sign
  for (size_t i = 0; i < m; ++i) {
    trimmed_task(i);
    const auto w = static_cast<float>(weight_of(o, i));
    for (size_t e = 0; e < n; ++e) elected[e] += w * model[e];
  }
  for (float& s : elected) s = sign_of(s);
  std::vector<float> agreeing_weight(n, 0.0f);
  std::fill(out.begin(), out.end(), 0.0f);
  for (size_t i = 0; i < m; ++i) {
    trimmed_task(i);
    const auto w = static_cast<float>(weight_of(o, i));
    for (size_t e = 0; e < n; ++e) {
      if (elected[e] != 0 && sign_of(model[e]) == elected[e]) {
        out[e] += w * model[e];
        agreeing_weight[e] += w;
      }
    }
  }
  const auto scale = static_cast<float>(o.scale);
  for (size_t e = 0; e < n; ++e) {
    const float merged = agreeing_weight[e] > 0 ? out[e] / agreeing_weight[e] : 0.0f;
    out[e] = base[e] + scale * merged;
  }
}

template <typename T>
std::string shape_text(const std::vector<T>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

uint64_t numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (const int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Every model holds exactly the base's parameter tensors, with the same shapes.
void check_same_tensors(const CheckpointReader& base, const std::vector<std::string>& names,
                        const std::vector<CheckpointReader>& models) {
  const std::set<std::string> base_names(names.begin(), names.end());
  if (names.empty()) fail("{}: the base checkpoint has no parameter tensors", base.path());
  for (const CheckpointReader& model : models) {
    for (const std::string& name : model.tensor_names(kParamsGroup)) {
      if (!base_names.contains(name)) {
        fail("{}: tensor {}/{} is not in the base checkpoint {}", model.path(), kParamsGroup, name, base.path());
      }
    }
    for (const std::string& name : names) {
      const std::vector<int64_t> base_shape = base.shape(kParamsGroup, name);
      const std::vector<int64_t> shape = model.shape(kParamsGroup, name);  // throws naming a missing one
      if (shape != base_shape) {
        fail("tensor {}/{} has shape {} in {} but {} in the base {}", kParamsGroup, name, shape_text(shape),
             model.path(), shape_text(base_shape), base.path());
      }
    }
  }
}

}  // namespace

MergeMethod parse_merge_method(std::string_view name) {
  for (size_t i = 0; i < std::size(kMethodNames); ++i) {
    if (name == kMethodNames[i]) return static_cast<MergeMethod>(i);
  }
  fail("unknown merge method \"{}\" (expected one of: {})", name, fmt::join(kMethodNames, ", "));
}

std::string_view merge_method_name(MergeMethod method) { return kMethodNames[static_cast<size_t>(method)]; }

void validate_merge_options(const MergeOptions& o, size_t n_models) {
  const std::string_view method = merge_method_name(o.method);
  if (n_models == 0) fail("merge: no models given");
  if (!o.weights.empty() && o.weights.size() != n_models) {
    fail("merge: {} weights for {} models (give one weight per model, or none)", o.weights.size(), n_models);
  }
  for (size_t i = 0; i < o.weights.size(); ++i) {
    if (!std::isfinite(o.weights[i])) fail("merge: weight {} is not finite", i);
  }
  if (o.method == MergeMethod::kSoup) {
    double total = 0;
    for (size_t i = 0; i < n_models; ++i) {
      if (weight_of(o, i) < 0) fail("merge: soup weight {} is negative ({})", i, weight_of(o, i));
      total += weight_of(o, i);
    }
    if (total <= 0) fail("merge: soup weights sum to {}, need > 0", total);
  }
  if (!std::isfinite(o.scale)) fail("merge: scale is not finite");
  if (o.method == MergeMethod::kTies) {
    if (!(o.density > 0 && o.density <= 1)) {
      fail("merge: --method ties needs --density in (0, 1], the fraction of each task vector kept (e.g. 0.2)");
    }
  } else if (o.density >= 0) {
    fail("merge: --density applies to ties, not {}", method);
  }
  if (o.method == MergeMethod::kDare) {
    if (!(o.drop >= 0 && o.drop < 1)) fail("merge: --method dare needs --drop in [0, 1), the drop probability (e.g. 0.5)");
  } else if (o.drop >= 0) {
    fail("merge: --drop applies to dare, not {}", method);
  }
}

void merge_tensor(const MergeOptions& options, std::string_view name, std::span<const float> base,
                  size_t n_models, const LoadModelTensor& load, std::span<float> out) {
  CADTRAIN_CHECK(base.size() == out.size(), "tensor {}: base has {} elements, out {}", name, base.size(), out.size());
  std::vector<float> model(base.size());
  switch (options.method) {
    case MergeMethod::kSoup:
      merge_soup(options, n_models, load, out, model);
      break;
    case MergeMethod::kTaskArithmetic:
    case MergeMethod::kDare:
      merge_linear(options, name, base, n_models, load, out, model);
      break;
    case MergeMethod::kTies:
      merge_ties(options, base, n_models, load, out, model);
      break;
  }
}

MergeSummary merge_checkpoints(const std::string& base_path, const std::vector<std::string>& model_paths,
                               const MergeOptions& options, const std::string& out_path) {
  validate_merge_options(options, model_paths.size());
  for (const std::string& p : model_paths) {
    if (p == out_path || base_path == out_path) fail("merge: --out {} is also an input", out_path);
  }
  const CheckpointReader base(base_path);
  std::vector<CheckpointReader> models;
  models.reserve(model_paths.size());
  for (const std::string& p : model_paths) models.emplace_back(p);
  const std::vector<std::string> names = base.tensor_names(kParamsGroup);
  check_same_tensors(base, names, models);

  // The merged model keeps the base's step and config; it has no optimizer moments.
  CheckpointWriter writer(out_path, base.state());
  MergeSummary summary;
  std::vector<float> base_values;
  std::vector<float> merged;
  for (const std::string& name : names) {
    const std::vector<int64_t> shape = base.shape(kParamsGroup, name);
    const auto n = static_cast<size_t>(numel(shape));
    base_values.resize(n);
    merged.resize(n);
    base.read(kParamsGroup, TensorRef{name, shape, base_values.data()});
    const LoadModelTensor load = [&](size_t i, std::span<float> dst) {
      models[i].read(kParamsGroup, TensorRef{name, shape, dst.data()});
    };
    merge_tensor(options, name, base_values, models.size(), load, merged);
    writer.write(kParamsGroup, TensorRef{name, shape, merged.data()});
    ++summary.tensors;
    summary.parameters += n;
  }
  writer.commit();
  return summary;
}

}  // namespace cadtrain::trainer
