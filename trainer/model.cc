// Model: parameters, buffers, initialisation, and the forward/backward over the whole stack: the
// loops over layers and parts (nano-batches) that order the stages of model_blocks.cc.
#include "trainer/model.h"

#include <fmt/format.h>

#include <cmath>

#include "common/error.h"
#include "common/rng.h"
#include "trainer/model_impl.h"

namespace cadtrain::trainer {
namespace {

void declare_layer(ParameterSet& p, const ModelDims& d, size_t l, LayerWeights& w) {
  const std::string prefix = fmt::format("layers.{}.", l);
  const int64_t c = d.c;
  if (d.kinds[l] == config::ATTENTION) {
    w.mixer_norm = p.add(prefix + "attn_norm", {c});
    w.wq = p.add(prefix + "attn.wq", {d.q_dim(), c});
    w.wk = p.add(prefix + "attn.wk", {d.kv_dim(), c});
    w.wv = p.add(prefix + "attn.wv", {d.kv_dim(), c});
    w.wo = p.add(prefix + "attn.wo", {c, d.q_dim()});
    if (d.qk_norm) {
      w.q_norm = p.add(prefix + "attn.q_norm", {d.head_dim});
      w.k_norm = p.add(prefix + "attn.k_norm", {d.head_dim});
    }
  } else {
    w.mixer_norm = p.add(prefix + "conv_norm", {c});
    w.conv_in = p.add(prefix + "conv.w_in", {3 * c, c});  // rows: B, C (gate), x
    w.conv_kernel = p.add(prefix + "conv.kernel", {c, d.conv_k});
    w.conv_out = p.add(prefix + "conv.w_out", {c, c});
  }
  w.mlp_norm = p.add(prefix + "mlp_norm", {c});
  w.w_gate = p.add(prefix + "mlp.w_gate", {d.ffn, c});
  w.w_up = p.add(prefix + "mlp.w_up", {d.ffn, c});
  w.w_down = p.add(prefix + "mlp.w_down", {c, d.ffn});
}

}  // namespace

Model::Impl::Impl(const config::ModelConfig& cfg, int64_t max_tokens_, kernels::Backend& backend,
                  kernels::CoreAttention& attn)
    : dims(ModelDims::from(cfg)), max_tokens(max_tokens_), be(backend), attention(attn) {
  CADTRAIN_CHECK(max_tokens > 0, "max_tokens must be positive");
  embedding = params.add("tok_embedding", {dims.vocab, dims.c});
  layers.resize(static_cast<size_t>(dims.n_layers));
  for (size_t l = 0; l < layers.size(); ++l) {
    layer_first_param.push_back(params.infos().size());
    declare_layer(params, dims, l, layers[l]);
  }
  layer_first_param.push_back(params.infos().size());
  final_norm = params.add("final_norm", {dims.c});
  lm_head = dims.tied ? embedding : params.add("lm_head", {dims.vocab, dims.c});
  params.allocate(be);

  const auto n = static_cast<size_t>(max_tokens);
  const auto c = static_cast<size_t>(dims.c);
  for (int64_t l = 0; l <= dims.n_layers; ++l) resid.push_back(buffer(n * c));
  acts.resize(dims.recompute ? 1 : layers.size());
  for (auto& a : acts) a = make_acts();
  for (size_t l = 0; l < layers.size(); ++l) {
    const bool is_attention = dims.kinds[l] == config::ATTENTION;
    attn_o.push_back(is_attention ? buffer(n * static_cast<size_t>(dims.q_dim())) : nullptr);
    attn_lse.push_back(is_attention ? buffer(n * static_cast<size_t>(dims.q_heads)) : nullptr);
  }
  const size_t wide = std::max<size_t>(c, static_cast<size_t>(dims.q_dim()));
  const auto f = static_cast<size_t>(dims.ffn);
  grads = GradScratch{buffer(n * c), buffer(n * c), buffer(n * c), buffer(n * static_cast<size_t>(dims.q_dim())),
                      buffer(n * static_cast<size_t>(dims.kv_dim())), buffer(n * static_cast<size_t>(dims.kv_dim())),
                      buffer(n * wide), buffer(n * wide), buffer(n * wide), buffer(n * wide),
                      buffer(n * f), buffer(n * f), buffer(n * f)};
  xf = buffer(n * c);
  rstd_f = buffer(n);
}

Model::Impl::~Impl() {
  for (float* p : owned) be.free(p);
}

float* Model::Impl::buffer(size_t count) {
  owned.push_back(be.alloc(count));
  return owned.back();
}

LayerActs Model::Impl::make_acts() {
  const auto n = static_cast<size_t>(max_tokens);
  const auto c = static_cast<size_t>(dims.c);
  const auto qd = static_cast<size_t>(dims.q_dim());
  const auto kvd = static_cast<size_t>(dims.kv_dim());
  const auto f = static_cast<size_t>(dims.ffn);
  bool any_attention = false, any_conv = false;
  for (const auto k : dims.kinds) (k == config::ATTENTION ? any_attention : any_conv) = true;
  LayerActs a;
  a.xn = buffer(n * c);
  a.rstd1 = buffer(n);
  if (any_attention) {
    a.q = buffer(n * qd);
    a.k = buffer(n * kvd);
    a.v = buffer(n * kvd);
    if (dims.qk_norm) {
      a.q_pre = buffer(n * qd);
      a.k_pre = buffer(n * kvd);
      a.rstd_q = buffer(n * static_cast<size_t>(dims.q_heads));
      a.rstd_k = buffer(n * static_cast<size_t>(dims.kv_heads));
    }
  }
  if (any_conv) {
    for (float** p : {&a.b, &a.cg, &a.xv, &a.yv, &a.z, &a.g}) *p = buffer(n * c);
  }
  a.x_mid = buffer(n * c);
  a.xn2 = buffer(n * c);
  a.rstd2 = buffer(n);
  a.gate = buffer(n * f);
  a.up = buffer(n * f);
  a.h = buffer(n * f);
  return a;
}

void Model::Impl::prepare(const Batch& batch) {
  // n = 0 is a rank whose share of a context-parallel micro-batch is empty: it has no rows but
  // still takes part in its strategy's communication and the gradient synchronisation.
  CADTRAIN_CHECK(batch.n >= 0 && batch.n <= max_tokens, "micro-batch of {} tokens, model built for at most {}",
                 batch.n, max_tokens);
  // Parts of near-equal rows (nano-batches); a part may cut a sequence: its tasks then attend to
  // the earlier part's keys.
  const auto n_parts = static_cast<int64_t>(nano_batches);
  parts.clear();
  for (int64_t p = 0; p < n_parts; ++p) parts.push_back({batch.n * p / n_parts, batch.n * (p + 1) / n_parts});
  first_pos.assign(static_cast<size_t>(std::max<int64_t>(batch.n_seqs, 0)), 0);
  for (int64_t s = 0; s < batch.n_seqs; ++s) {
    const int32_t row = batch.cu_seqlens[s];
    if (row < batch.cu_seqlens[s + 1] && row < batch.n) first_pos[static_cast<size_t>(s)] = batch.positions[row];
  }
  const kernels::AttentionShape shape{batch.n, dims.q_heads, dims.kv_heads, dims.head_dim,
                                      static_cast<float>(1.0 / std::sqrt(static_cast<double>(dims.head_dim)))};
  const kernels::SequenceLayout layout{batch.cu_seqlens, batch.n_seqs, first_pos.data(), batch.doc_ids};
  fwd_handles.clear();  // handles of the previous micro-batch, before its plan goes
  bwd_handles.clear();
  plan.reset();
  const double t0 = now_seconds();
  plan = attention.prepare(shape, layout, parts);
  times.core_attention += now_seconds() - t0;
  fwd_handles.resize(layers.size() * parts.size());
  bwd_handles.resize(parts.size());
}

// Each part's pre stage then its core stage (so a part's core attention can overlap the next
// part's projections), then every part's post stage (waiting for its core attention).
void Model::Impl::forward_layer(size_t l, const Batch& batch, bool recomputing) {
  LayerActs& a = acts_of(l);
  for (size_t p = 0; p < parts.size(); ++p) {
    mixer_pre(l, batch, p, a);
    mixer_core(l, batch, p, a, recomputing);
  }
  for (size_t p = 0; p < parts.size(); ++p) layer_post(l, batch, p, a);
}

// Parts last to first: a part's core backward adds into dK, dV of earlier parts' rows, so every
// part's pre_backward waits until all core backwards of the layer have been started.
void Model::Impl::backward_layer(size_t l, const Batch& batch) {
  LayerActs& a = acts_of(l);
  if (dims.kinds[l] == config::ATTENTION) {
    const auto kv = static_cast<size_t>(batch.n * dims.kv_dim());
    be.zero(grads.dk, kv);  // core backward accumulates into them
    be.zero(grads.dv, kv);
  }
  for (size_t p = parts.size(); p-- > 0;) {
    post_backward(l, batch, p, a);
    core_backward(l, batch, p, a);
  }
  for (size_t p = parts.size(); p-- > 0;) pre_backward(l, batch, p, a);
}

void Model::Impl::forward_trunk(const Batch& batch) {
  prepare(batch);
  for (int64_t i = 0; i < batch.n; ++i) {
    if (batch.tokens[i] >= static_cast<uint32_t>(dims.vocab)) {
      fail("token {} at position {} of the micro-batch is >= vocab_size {}", batch.tokens[i], i, dims.vocab);
    }
  }
  be.embedding_forward(resid[0], batch.tokens, params.param(embedding), batch.n, dims.c);
  for (size_t l = 0; l < layers.size(); ++l) forward_layer(l, batch, false);
  be.rmsnorm_forward(xf, rstd_f, resid.back(), params.param(final_norm), batch.n, dims.c,
                     static_cast<float>(dims.norm_eps));
}

void Model::Impl::announce_grads(GradientSync* sync, size_t first, size_t end, int layer) {
  if (sync == nullptr) return;
  const ParamInfo& last = params.info(end - 1);
  const size_t offset = params.info(first).offset;
  sync->grads_ready(GradGroup{first, end, offset, last.offset + last.numel - offset, layer});
}

kernels::LmHeadLossArgs Model::Impl::loss_args(const Batch& batch) const {
  kernels::LmHeadLossArgs args;
  args.h = xf;
  args.w = params.param(lm_head);
  args.targets = batch.targets;
  args.mask = batch.loss_mask;
  args.n = batch.n;
  args.c = dims.c;
  args.v = dims.vocab;
  return args;
}

Model::Model(const config::ModelConfig& cfg, int64_t max_tokens, kernels::Backend& backend,
             kernels::CoreAttention& attention)
    : impl_(std::make_unique<Impl>(cfg, max_tokens, backend, attention)) {}

Model::~Model() = default;

const ModelDims& Model::dims() const { return impl_->dims; }
ParameterSet& Model::params() { return impl_->params; }
kernels::Backend& Model::backend() { return impl_->be; }
const PhaseTimes& Model::times() const { return impl_->times; }
void Model::reset_times() { impl_->times = PhaseTimes{}; }

void Model::set_nano_batches(int count) {
  CADTRAIN_CHECK(count >= 1, "nano_batches = {}: must be at least 1", count);
  impl_->nano_batches = count;
}

void Model::init_weights(uint64_t seed) {
  Impl& m = *impl_;
  const double residual_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(m.dims.n_layers));
  for (size_t i = 0; i < m.params.infos().size(); ++i) {
    ParamInfo& info = m.params.infos()[i];
    std::vector<float> host(info.numel);
    Rng rng(seed, i + 1);  // one stream per tensor: adding a tensor does not change the others
    const bool is_norm = info.shape.size() == 1;
    const bool is_residual_out = info.name.ends_with("attn.wo") || info.name.ends_with("mlp.w_down") ||
                                 info.name.ends_with("conv.w_out");
    double std = m.dims.init_std * (is_residual_out ? residual_scale : 1.0);
    if (info.name.ends_with("conv.kernel")) std = 1.0 / std::sqrt(static_cast<double>(m.dims.conv_k));
    for (auto& x : host) x = is_norm ? 1.0f : static_cast<float>(std * rng.normal());
    m.be.copy(m.params.param(i), host.data(), info.numel);
  }
}

LossSum Model::forward_backward(const Batch& batch, float grad_scale, GradientSync* grad_sync) {
  Impl& m = *impl_;
  const double t0 = now_seconds();
  m.forward_trunk(batch);
  const double t_loss = now_seconds();
  kernels::LmHeadLossArgs loss_args = m.loss_args(batch);
  loss_args.dh = m.grads.dtmp;
  loss_args.dw = m.params.grad(m.lm_head);
  loss_args.grad_scale = grad_scale;
  loss_args.distill = batch.distill ? batch.distill() : nullptr;
  const kernels::LmHeadLossResult loss = m.be.lm_head_cross_entropy(loss_args);
  const double t1 = now_seconds();
  m.times.loss += t1 - t_loss;
  m.times.forward += t_loss - t0;

  // d(final norm input) -> residual gradient
  m.be.rmsnorm_backward(m.grads.dx, m.params.grad(m.final_norm), m.grads.dtmp, m.resid.back(),
                        m.params.param(m.final_norm), m.rstd_f, batch.n, m.dims.c);
  // final_norm, then lm_head when untied (a tied head is the embedding, complete only at the end)
  m.announce_grads(grad_sync, m.final_norm, m.params.infos().size(), GradGroup::kHead);
  for (size_t l = m.layers.size(); l-- > 0;) {
    if (m.dims.recompute) {
      const double r0 = now_seconds();
      m.forward_layer(l, batch, true);  // refills the shared LayerActs from resid[l]
      m.times.forward += now_seconds() - r0;
    }
    m.backward_layer(l, batch);
    m.announce_grads(grad_sync, m.layer_first_param[l], m.layer_first_param[l + 1], static_cast<int>(l));
  }
  m.be.embedding_backward(m.params.grad(m.embedding), m.grads.dx, batch.tokens, batch.n, m.dims.c);
  m.announce_grads(grad_sync, m.embedding, m.embedding + 1, GradGroup::kEmbedding);
  m.times.backward += now_seconds() - t1;
  return LossSum{loss.loss_sum, loss.weight_sum, loss.kd_sum};
}

LossSum Model::evaluate(const Batch& batch, float* row_loss, uint32_t* row_argmax) {
  Impl& m = *impl_;
  const double t0 = now_seconds();
  m.forward_trunk(batch);
  kernels::LmHeadLossArgs loss_args = m.loss_args(batch);
  loss_args.row_loss = row_loss;
  loss_args.row_argmax = row_argmax;
  loss_args.distill = batch.distill ? batch.distill() : nullptr;
  const kernels::LmHeadLossResult loss = m.be.lm_head_cross_entropy(loss_args);
  m.times.forward += now_seconds() - t0;
  return LossSum{loss.loss_sum, loss.weight_sum, loss.kd_sum};
}

void Model::logits(const Batch& batch, float* out) {
  Impl& m = *impl_;
  m.forward_trunk(batch);
  m.be.linear_forward(out, m.xf, m.params.param(m.lm_head), batch.n, m.dims.c, m.dims.vocab);
}

}  // namespace cadtrain::trainer
