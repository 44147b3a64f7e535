// Model merging (DESIGN section 7), streaming tensor by tensor: at most a few tensors of one name
// are in memory at once, never a whole model.
//
// With base parameters b, models theta_i, task vectors tau_i = theta_i - b and weights w_i:
//   soup             out = sum_i w_i theta_i / sum_i w_i                (the base is not averaged)
//   task_arithmetic  out = b + scale * sum_i w_i tau_i
//   ties             t_i = tau_i trimmed to its ceil(density * n) largest magnitudes (per tensor;
//                    equal magnitudes kept in index order); elected sign s = sign(sum_i w_i t_i);
//                    out = b + scale * (sum over i with sign(t_i) = s != 0 of w_i t_i) / (sum of
//                    those w_i); 0 where no model agrees
//   dare             t_i = m_i * tau_i / (1 - drop), m_i Bernoulli(1 - drop) per element, drawn
//                    from (seed, tensor name, model index); out = b + scale * sum_i w_i t_i
// Results do not depend on tensor order or thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cadtrain::trainer {

enum class MergeMethod { kSoup, kTaskArithmetic, kTies, kDare };

// "soup" | "task_arithmetic" | "ties" | "dare"; throws listing the valid names.
MergeMethod parse_merge_method(std::string_view name);
std::string_view merge_method_name(MergeMethod method);

struct MergeOptions {
  MergeMethod method = MergeMethod::kSoup;
  std::vector<double> weights;  // one per model; empty = 1 each
  double density = -1;          // ties: fraction of each task vector kept, (0, 1]
  double drop = -1;             // dare: drop probability, [0, 1)
  double scale = 1;             // task_arithmetic, ties, dare: multiplies the merged task vector
  uint64_t seed = 0;            // dare
};

// Throws naming the option when options do not fit the method and n_models models.
void validate_merge_options(const MergeOptions& options, size_t n_models);

// Fills out[n] with model `index`'s tensor (the one being merged). May be called more than once
// per model (ties reads each model twice rather than holding all of them).
using LoadModelTensor = std::function<void(size_t index, std::span<float> out)>;

// Merges one tensor named `name` (the name seeds dare's masks).
void merge_tensor(const MergeOptions& options, std::string_view name, std::span<const float> base,
                  size_t n_models, const LoadModelTensor& load, std::span<float> out);

struct MergeSummary {
  size_t tensors = 0;
  uint64_t parameters = 0;
};

// Merges checkpoint files into `out_path` (weights only, with the base's step and config),
// written to a temporary file and published atomically. Every model must hold exactly the base's
// parameter tensors with the same shapes: all are checked before anything is written, and a
// mismatch is refused naming the tensor, the file and both shapes.
MergeSummary merge_checkpoints(const std::string& base_path, const std::vector<std::string>& model_paths,
                               const MergeOptions& options, const std::string& out_path);

}  // namespace cadtrain::trainer
