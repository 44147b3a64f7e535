// parity_dump: runs the CPU model on one fixed case and writes everything an independent
// implementation needs to check it (tests/torch_parity.py reads the file):
//
//   parity_dump <case> <out.h5>        cases: attn_gqa, hybrid_qknorm_tied, long_positions
//
// File layout (all float tensors fp32, shapes as the model declares them):
//   attributes of /      case, vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim,
//                        ffn_hidden, conv_kernel, rope_theta, norm_eps, tie_embeddings, qk_norm,
//                        layer_kinds [n_layers] (0 ATTENTION, 1 SHORT_CONV), loss_sum, weight_sum,
//                        mean_loss (from evaluate), fb_loss_sum, fb_weight_sum (forward_backward),
//                        grad_scale, param_names [n_params] (every tensor the model declares)
//   /batch/tokens, targets (u32), loss_mask (f32), positions, cu_seqlens (i32)
//   /logits [n, vocab]   Model::logits
//   /row_loss [n]        Model::evaluate's per-token losses (0 where masked)
//   /params/<name>       every parameter, after init_weights(seed) and the norm perturbation
//   /grads/<name>        gradient of the mean masked loss: forward_backward(batch, 1/sum(mask))
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"        // cadtrain::Error, fail()
#include "common/hdf5_handles.h"  // RAII hid_t owners, h5::check/own
#include "common/rng.h"          // Rng: deterministic batches and perturbations
#include "configs/config.h"      // parse_run_config
#include "kernels/backend.h"     // make_cpu_backend
#include "kernels/core_attention.h"  // make_local_task_attention
#include "trainer/batch.h"       // batch_view
#include "trainer/model.h"       // trainer::Model, Batch

using namespace cadtrain;

namespace {

// One parity case: the model config (text format, validated like a run config) and the packed
// batch's sequences, each with the position of its first token and an optional jump (positions
// first, first+1, ..., then +jump from token jump_at on, as position synthesis makes them). RoPE
// attention sees only position differences, so a constant offset alone cannot tell whether the
// model reads the position tensor; the jump can.
struct Sequence {
  int32_t length = 0;
  int32_t first_position = 0;
  int32_t jump_at = 0;  // 0: no jump
  int32_t jump = 0;
};

struct Case {
  const char* name;
  const char* model_text;
  std::vector<Sequence> sequences;
};

// init_std 0.3 (not the 0.02 default) so that attention is far from uniform and every path
// carries gradient well above fp32 rounding.
const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      // (a) attention only, GQA 4:2 (head_dim 12), untied head, no qk-norm.
      {"attn_gqa",
       R"(model { vocab_size: 64 d_model: 48 n_layers: 2 n_heads: 4 n_kv_heads: 2 ffn_hidden: 80
                  rope_theta: 10000 norm_eps: 1e-5 tie_embeddings: false qk_norm: false init_std: 0.3 })",
       {{17, 0}, {1, 0}, {23, 0}, {9, 0}}},
      // (b) hybrid: short conv, attention, short conv; qk-norm; tied; GQA 4:1 (head_dim 8).
      {"hybrid_qknorm_tied",
       R"(model { vocab_size: 53 d_model: 32 n_layers: 3 n_heads: 4 n_kv_heads: 1 ffn_hidden: 72
                  rope_theta: 10000 norm_eps: 1e-6 tie_embeddings: true qk_norm: true init_std: 0.3
                  conv_kernel: 3 layer_kinds: [SHORT_CONV, ATTENTION, SHORT_CONV] })",
       {{2, 0}, {21, 0}, {1, 0}, {14, 0}, {8, 0}}},
      // (c) head_dim 64 (q width 128 > d_model 64), theta 5e5, document pieces at large positions,
      // one sequence with a position jump of 700 after its 10th token.
      {"long_positions",
       R"(model { vocab_size: 96 d_model: 64 n_layers: 2 n_heads: 2 n_kv_heads: 2 head_dim: 64 ffn_hidden: 96
                  rope_theta: 500000 norm_eps: 1e-5 tie_embeddings: false qk_norm: false init_std: 0.3
                  max_seq_len: 8192 })",
       {{24, 1000}, {1, 3071}, {19, 0, 10, 700}, {6, 517}}},
  };
  return all;
}

// Random tokens and targets (masked rows keep a random in-vocabulary target, so a loss or
// gradient that leaks from a masked row shows up as a mismatch); about 1 in 6 rows masked.
data::MicroBatch make_batch(const std::vector<Sequence>& seqs, uint32_t vocab, uint64_t seed) {
  Rng rng(seed);
  data::MicroBatch b;
  b.cu_seqlens.push_back(0);
  for (const Sequence& s : seqs) {
    for (int32_t i = 0; i < s.length; ++i) {
      b.tokens.push_back(static_cast<uint32_t>(rng.below(vocab)));
      b.targets.push_back(static_cast<uint32_t>(rng.below(vocab)));
      b.loss_mask.push_back(rng.below(6) == 0 ? 0.0f : 1.0f);
      b.positions.push_back(s.first_position + i + (s.jump_at > 0 && i >= s.jump_at ? s.jump : 0));
    }
    b.cu_seqlens.push_back(b.cu_seqlens.back() + s.length);
  }
  return b;
}

// ---- HDF5 writing (caller holds the library lock) ----

void write_dataset(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                   const std::vector<hsize_t>& dims, const void* data) {
  const std::string what = fmt::format("cannot write {}", name);
  auto space = h5::own<h5::Space>(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what);
  auto dataset = h5::own<h5::Dataset>(
      H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Dwrite(dataset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
}

void write_floats(hid_t loc, const std::string& name, const std::vector<int64_t>& shape, const float* data) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  write_dataset(loc, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, dims, data);
}

template <typename T>
void write_attr(hid_t loc, const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& values) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto space = h5::space_1d(values.size());
  auto attr = h5::own<h5::Attribute>(H5Acreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Awrite(attr.get(), mem_type, values.data()), what);
}

void write_attr_i64(hid_t loc, const char* name, int64_t v) {
  write_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, std::vector<int64_t>{v});
}

void write_attr_f64(hid_t loc, const char* name, double v) {
  write_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, std::vector<double>{v});
}

// Variable-length UTF-8 strings (h5py reads them as str or bytes).
void write_attr_strings(hid_t loc, const char* name, const std::vector<std::string>& values) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto type = h5::own<h5::Type>(H5Tcopy(H5T_C_S1), what);
  h5::check(H5Tset_size(type.get(), H5T_VARIABLE), what);
  h5::check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  std::vector<const char*> ptrs;
  for (const auto& s : values) ptrs.push_back(s.c_str());
  auto space = h5::space_1d(values.size());
  auto attr = h5::own<h5::Attribute>(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Awrite(attr.get(), type.get(), ptrs.data()), what);
}

using Group = h5::Handle<H5Gclose>;

Group make_group(hid_t file, const char* name) {
  return h5::own<Group>(H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                        fmt::format("cannot create group {}", name));
}

void run_case(const Case& c, const std::string& out_path) {
  const config::RunConfig run = config::parse_run_config(c.model_text, fmt::format("parity case {}", c.name));
  const config::ModelConfig& cfg = run.model();
  const data::MicroBatch batch = make_batch(c.sequences, cfg.vocab_size(), 20240611);
  const trainer::Batch view = trainer::batch_view(batch);

  auto be = kernels::make_cpu_backend();
  auto attention = kernels::make_local_task_attention();
  trainer::Model model(cfg, view.n, *be, *attention);
  model.init_weights(5);
  trainer::ParameterSet& params = model.params();
  // init_weights sets every norm weight to 1, which would hide a norm weight applied wrongly (or
  // not at all); give them random values around 1.
  Rng perturb(99);
  for (size_t i = 0; i < params.infos().size(); ++i) {
    const trainer::ParamInfo& info = params.info(i);
    if (info.shape.size() != 1) continue;
    std::vector<float> w(info.numel);
    for (auto& x : w) x = static_cast<float>(1.0 + 0.3 * perturb.normal());
    be->copy(params.param(i), w.data(), info.numel);
  }

  const auto n = static_cast<size_t>(view.n);
  const auto vocab = static_cast<size_t>(cfg.vocab_size());
  std::vector<float> logits(n * vocab);
  model.logits(view, logits.data());
  std::vector<float> row_loss(n);
  const trainer::LossSum eval = model.evaluate(view, row_loss.data(), nullptr);
  CADTRAIN_CHECK(eval.weight_sum > 0, "case {}: the batch has no unmasked token", c.name);
  const auto grad_scale = static_cast<float>(1.0 / eval.weight_sum);
  be->zero(params.grads(), params.total());
  const trainer::LossSum fb = model.forward_backward(view, grad_scale);

  auto guard = h5::lock();
  auto file = h5::own<h5::File>(H5Fcreate(out_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                                fmt::format("cannot create {}", out_path));
  const hid_t root = file.get();
  const trainer::ModelDims& d = model.dims();
  write_attr_strings(root, "case", {c.name});
  write_attr_i64(root, "vocab_size", d.vocab);
  write_attr_i64(root, "d_model", d.c);
  write_attr_i64(root, "n_layers", d.n_layers);
  write_attr_i64(root, "n_heads", d.q_heads);
  write_attr_i64(root, "n_kv_heads", d.kv_heads);
  write_attr_i64(root, "head_dim", d.head_dim);
  write_attr_i64(root, "ffn_hidden", d.ffn);
  write_attr_i64(root, "conv_kernel", d.conv_k);
  write_attr_f64(root, "rope_theta", d.rope_theta);
  write_attr_f64(root, "norm_eps", d.norm_eps);
  write_attr_i64(root, "tie_embeddings", d.tied ? 1 : 0);
  write_attr_i64(root, "qk_norm", d.qk_norm ? 1 : 0);
  std::vector<int64_t> kinds;
  for (const auto k : d.kinds) kinds.push_back(static_cast<int64_t>(k));
  write_attr(root, "layer_kinds", H5T_STD_I64LE, H5T_NATIVE_INT64, kinds);
  write_attr_f64(root, "loss_sum", eval.loss_sum);
  write_attr_f64(root, "weight_sum", eval.weight_sum);
  write_attr_f64(root, "mean_loss", eval.loss_sum / eval.weight_sum);
  write_attr_f64(root, "fb_loss_sum", fb.loss_sum);
  write_attr_f64(root, "fb_weight_sum", fb.weight_sum);
  write_attr_f64(root, "grad_scale", grad_scale);
  std::vector<std::string> names;
  for (const auto& info : params.infos()) names.push_back(info.name);
  write_attr_strings(root, "param_names", names);

  {
    Group g = make_group(root, "batch");
    const hsize_t nn = n, ns = batch.cu_seqlens.size();
    write_dataset(g.get(), "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, {nn}, batch.tokens.data());
    write_dataset(g.get(), "targets", H5T_STD_U32LE, H5T_NATIVE_UINT32, {nn}, batch.targets.data());
    write_dataset(g.get(), "loss_mask", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {nn}, batch.loss_mask.data());
    write_dataset(g.get(), "positions", H5T_STD_I32LE, H5T_NATIVE_INT32, {nn}, batch.positions.data());
    write_dataset(g.get(), "cu_seqlens", H5T_STD_I32LE, H5T_NATIVE_INT32, {ns}, batch.cu_seqlens.data());
  }
  write_floats(root, "logits", {view.n, d.vocab}, logits.data());
  write_floats(root, "row_loss", {view.n}, row_loss.data());
  {
    Group gp = make_group(root, "params");
    Group gg = make_group(root, "grads");
    for (size_t i = 0; i < params.infos().size(); ++i) {
      const trainer::ParamInfo& info = params.info(i);
      write_floats(gp.get(), info.name, info.shape, params.param(i));
      write_floats(gg.get(), info.name, info.shape, params.grad(i));
    }
  }
  file.close(fmt::format("cannot close {}", out_path));
  fmt::print("parity_dump {}: {} tokens in {} sequences, {} parameter tensors, mean loss {:.6f} -> {}\n", c.name,
             n, batch.cu_seqlens.size() - 1, params.infos().size(), eval.loss_sum / eval.weight_sum, out_path);
}

}  // namespace

int main(int argc, char** argv) {
  std::string names;
  for (const Case& c : cases()) names += fmt::format(" {}", c.name);
  if (argc != 3) {
    fmt::print(stderr, "usage: {} <case> <out.h5>\ncases:{}\n", argv[0], names);
    return 2;
  }
  const std::string want = argv[1];
  for (const Case& c : cases()) {
    if (want != c.name) continue;
    try {
      run_case(c, argv[2]);
      return 0;
    } catch (const std::exception& e) {
      fmt::print(stderr, "parity_dump {}: {}\n", c.name, e.what());
      return 1;
    }
  }
  fmt::print(stderr, "parity_dump: unknown case '{}'; cases:{}\n", want, names);
  return 2;
}
