// The model's stages, forward and backward: GQA attention, gated short convolution, SwiGLU MLP,
// each on the rows of one part (nano-batch); see model_impl.h for the stage split.
// Conventions: resid[l] is the layer input, a.x_mid the stream after the mixer, resid[l+1] the
// layer output; grads.dx holds the gradient of the stream at the point the backward has reached.
// Every [N, width] buffer is addressed at row r.begin of the part (at(p, r, width)).
#include <cmath>

#include "common/error.h"
#include "trainer/model_impl.h"

namespace cadtrain::trainer {
namespace {

template <typename T>
T* at(T* p, kernels::RowRange r, int64_t width) {
  return p + r.begin * width;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Forward

void Model::Impl::mixer_pre(size_t l, const Batch& batch, size_t p, LayerActs& a) {
  const LayerWeights& w = layers[l];
  const kernels::RowRange r = parts[p];
  const int64_t n = r.size(), c = dims.c;
  if (n == 0) return;
  const auto eps = static_cast<float>(dims.norm_eps);
  be.rmsnorm_forward(at(a.xn, r, c), at(a.rstd1, r, 1), at(resid[l], r, c), params.param(w.mixer_norm), n, c, eps);
  if (dims.kinds[l] != config::ATTENTION) {
    const float* w_in = params.param(w.conv_in);  // [3C, C]: rows of B, then C (gate), then x
    const float* xn = at(a.xn, r, c);
    be.linear_forward(at(a.b, r, c), xn, w_in, n, c, c);
    be.linear_forward(at(a.cg, r, c), xn, w_in + c * c, n, c, c);
    be.linear_forward(at(a.xv, r, c), xn, w_in + 2 * c * c, n, c, c);
    be.mul_forward(at(a.yv, r, c), at(a.b, r, c), at(a.xv, r, c), static_cast<size_t>(n * c));  // y = B * x
    return;
  }
  const int64_t qd = dims.q_dim(), kvd = dims.kv_dim(), d = dims.head_dim;
  const auto theta = static_cast<float>(dims.rope_theta);
  float* q_lin = dims.qk_norm ? a.q_pre : a.q;
  float* k_lin = dims.qk_norm ? a.k_pre : a.k;
  const float* xn = at(a.xn, r, c);
  be.linear_forward(at(q_lin, r, qd), xn, params.param(w.wq), n, c, qd);  // [n, Hq*D]
  be.linear_forward(at(k_lin, r, kvd), xn, params.param(w.wk), n, c, kvd);
  be.linear_forward(at(a.v, r, kvd), xn, params.param(w.wv), n, c, kvd);
  if (dims.qk_norm) {  // per-head RMSNorm: rows are (token, head) pairs of width D
    be.rmsnorm_forward(at(a.q, r, qd), at(a.rstd_q, r, dims.q_heads), at(a.q_pre, r, qd), params.param(w.q_norm),
                       n * dims.q_heads, d, eps);
    be.rmsnorm_forward(at(a.k, r, kvd), at(a.rstd_k, r, dims.kv_heads), at(a.k_pre, r, kvd), params.param(w.k_norm),
                       n * dims.kv_heads, d, eps);
  }
  be.rope_forward(at(a.q, r, qd), batch.positions + r.begin, n, dims.q_heads, d, theta);
  be.rope_forward(at(a.k, r, kvd), batch.positions + r.begin, n, dims.kv_heads, d, theta);
}

void Model::Impl::mixer_core(size_t l, const Batch& batch, size_t p, LayerActs& a, bool recomputing) {
  if (dims.kinds[l] != config::ATTENTION) {
    // The convolution reads up to conv_k - 1 rows of the previous part: once, over all rows, when
    // every part's pre stage has run.
    if (p + 1 != parts.size()) return;
    be.short_conv_forward(a.z, a.yv, params.param(layers[l].conv_kernel), batch.cu_seqlens, batch.n_seqs, dims.c,
                          dims.conv_k);
    return;
  }
  if (recomputing) return;  // O and LSE are kept from the forward
  const double t0 = now_seconds();
  fwd_handles[l * parts.size() + p] =
      attention.forward(static_cast<int>(l), *plan, p, kernels::AttentionIO{a.q, a.k, a.v, attn_o[l], attn_lse[l]});
  times.core_attention += now_seconds() - t0;
}

void Model::Impl::layer_post(size_t l, const Batch& /*batch*/, size_t p, LayerActs& a) {
  const LayerWeights& w = layers[l];
  const kernels::RowRange r = parts[p];
  const int64_t n = r.size(), c = dims.c;
  if (dims.kinds[l] == config::ATTENTION) {
    if (auto& handle = fwd_handles[l * parts.size() + p]) {
      const double t0 = now_seconds();
      handle->wait();
      times.core_attention += now_seconds() - t0;
    }
    if (n == 0) return;
    const int64_t qd = dims.q_dim();
    be.linear_forward(at(a.x_mid, r, c), at(attn_o[l], r, qd), params.param(w.wo), n, qd, c);
  } else {
    if (n == 0) return;
    be.mul_forward(at(a.g, r, c), at(a.cg, r, c), at(a.z, r, c), static_cast<size_t>(n * c));  // C * conv(y)
    be.linear_forward(at(a.x_mid, r, c), at(a.g, r, c), params.param(w.conv_out), n, c, c);
  }
  be.accumulate(at(a.x_mid, r, c), at(resid[l], r, c), static_cast<size_t>(n * c));
  mlp_forward(l, r, a);
}

void Model::Impl::mlp_forward(size_t l, kernels::RowRange r, LayerActs& a) {
  const LayerWeights& w = layers[l];
  const int64_t n = r.size(), c = dims.c, f = dims.ffn;
  be.rmsnorm_forward(at(a.xn2, r, c), at(a.rstd2, r, 1), at(a.x_mid, r, c), params.param(w.mlp_norm), n, c,
                     static_cast<float>(dims.norm_eps));
  be.linear_forward(at(a.gate, r, f), at(a.xn2, r, c), params.param(w.w_gate), n, c, f);
  be.linear_forward(at(a.up, r, f), at(a.xn2, r, c), params.param(w.w_up), n, c, f);
  be.swiglu_forward(at(a.h, r, f), at(a.gate, r, f), at(a.up, r, f), static_cast<size_t>(n * f));
  be.linear_forward(at(resid[l + 1], r, c), at(a.h, r, f), params.param(w.w_down), n, f, c);
  be.accumulate(at(resid[l + 1], r, c), at(a.x_mid, r, c), static_cast<size_t>(n * c));
}

// ---------------------------------------------------------------------------------------------
// Backward

void Model::Impl::mlp_backward(size_t l, kernels::RowRange r, LayerActs& a) {
  const LayerWeights& w = layers[l];
  GradScratch& g = grads;
  const int64_t n = r.size(), c = dims.c, f = dims.ffn;
  be.linear_backward(at(g.dh, r, f), params.grad(w.w_down), at(g.dx, r, c), at(a.h, r, f), params.param(w.w_down), n,
                     f, c, false);
  be.swiglu_backward(at(g.dgate, r, f), at(g.dup, r, f), at(g.dh, r, f), at(a.gate, r, f), at(a.up, r, f),
                     static_cast<size_t>(n * f));
  be.linear_backward(at(g.dxn, r, c), params.grad(w.w_gate), at(g.dgate, r, f), at(a.xn2, r, c),
                     params.param(w.w_gate), n, c, f, false);
  be.linear_backward(at(g.dxn, r, c), params.grad(w.w_up), at(g.dup, r, f), at(a.xn2, r, c), params.param(w.w_up), n,
                     c, f, true);
  be.rmsnorm_backward(at(g.dtmp, r, c), params.grad(w.mlp_norm), at(g.dxn, r, c), at(a.x_mid, r, c),
                      params.param(w.mlp_norm), at(a.rstd2, r, 1), n, c);
  be.accumulate(at(g.dx, r, c), at(g.dtmp, r, c), static_cast<size_t>(n * c));
}

// MLP backward, then the mixer's output side: dO (attention) or dC, dz (conv) of the part's rows.
void Model::Impl::post_backward(size_t l, const Batch& /*batch*/, size_t p, LayerActs& a) {
  const LayerWeights& w = layers[l];
  GradScratch& g = grads;
  const kernels::RowRange r = parts[p];
  const int64_t n = r.size(), c = dims.c;
  if (n == 0) return;
  mlp_backward(l, r, a);
  if (dims.kinds[l] == config::ATTENTION) {
    const int64_t qd = dims.q_dim();
    be.linear_backward(at(g.do_, r, qd), params.grad(w.wo), at(g.dx, r, c), at(attn_o[l], r, qd),
                       params.param(w.wo), n, qd, c, false);
    return;
  }
  float* dg = at(g.do_, r, c);
  float* dcg = at(g.dc1, r, c);
  float* dz = at(g.dc2, r, c);
  be.linear_backward(dg, params.grad(w.conv_out), at(g.dx, r, c), at(a.g, r, c), params.param(w.conv_out), n, c, c,
                     false);
  be.mul_backward(dcg, dz, dg, at(a.cg, r, c), at(a.z, r, c), static_cast<size_t>(n * c));
}

void Model::Impl::core_backward(size_t l, const Batch& batch, size_t p, LayerActs& a) {
  GradScratch& g = grads;
  if (dims.kinds[l] != config::ATTENTION) {
    // dz of every row is in (post_backward ran for every part): the convolution backward, once.
    if (p != 0) return;
    be.short_conv_backward(g.dc3, params.grad(layers[l].conv_kernel), g.dc2, a.yv, params.param(layers[l].conv_kernel),
                           batch.cu_seqlens, batch.n_seqs, dims.c, dims.conv_k);
    return;
  }
  const double t0 = now_seconds();
  kernels::AttentionHandle* fwd = fwd_handles[l * parts.size() + p].get();
  CADTRAIN_CHECK(fwd != nullptr, "layer {}: core attention backward of part {} without its forward", l, p);
  bwd_handles[p] = attention.backward(static_cast<int>(l), *plan, p, *fwd,
                                      kernels::AttentionIO{a.q, a.k, a.v, attn_o[l], attn_lse[l]},
                                      kernels::AttentionGrads{g.do_, g.dq, g.dk, g.dv});
  times.core_attention += now_seconds() - t0;
}

// The mixer's input side: from dQ, dK, dV (attention) or dy (conv) to the stream gradient.
void Model::Impl::pre_backward(size_t l, const Batch& batch, size_t p, LayerActs& a) {
  const LayerWeights& w = layers[l];
  GradScratch& g = grads;
  const kernels::RowRange r = parts[p];
  const int64_t n = r.size(), c = dims.c;
  if (dims.kinds[l] == config::ATTENTION) {
    if (auto& handle = bwd_handles[p]) {
      const double t0 = now_seconds();
      handle->wait();
      times.core_attention += now_seconds() - t0;
      handle.reset();
    }
  }
  if (n == 0) return;
  if (dims.kinds[l] == config::ATTENTION) {
    const int64_t qd = dims.q_dim(), kvd = dims.kv_dim(), d = dims.head_dim;
    const auto theta = static_cast<float>(dims.rope_theta);
    float* dq = at(g.dq, r, qd);
    float* dk = at(g.dk, r, kvd);
    be.rope_backward(dq, batch.positions + r.begin, n, dims.q_heads, d, theta);
    be.rope_backward(dk, batch.positions + r.begin, n, dims.kv_heads, d, theta);
    if (dims.qk_norm) {
      float* dq_pre = at(g.dc1, r, qd);
      float* dk_pre = at(g.dc2, r, kvd);
      be.rmsnorm_backward(dq_pre, params.grad(w.q_norm), dq, at(a.q_pre, r, qd), params.param(w.q_norm),
                          at(a.rstd_q, r, dims.q_heads), n * dims.q_heads, d);
      be.rmsnorm_backward(dk_pre, params.grad(w.k_norm), dk, at(a.k_pre, r, kvd), params.param(w.k_norm),
                          at(a.rstd_k, r, dims.kv_heads), n * dims.kv_heads, d);
      dq = dq_pre;
      dk = dk_pre;
    }
    const float* xn = at(a.xn, r, c);
    float* dxn = at(g.dxn, r, c);
    be.linear_backward(dxn, params.grad(w.wq), dq, xn, params.param(w.wq), n, c, qd, false);
    be.linear_backward(dxn, params.grad(w.wk), dk, xn, params.param(w.wk), n, c, kvd, true);
    be.linear_backward(dxn, params.grad(w.wv), at(g.dv, r, kvd), xn, params.param(w.wv), n, c, kvd, true);
  } else {
    const auto nc = static_cast<size_t>(n * c);
    float* db = at(g.dc2, r, c);   // dz is consumed
    float* dxv = at(g.do_, r, c);  // dg is consumed
    be.mul_backward(db, dxv, at(g.dc3, r, c), at(a.b, r, c), at(a.xv, r, c), nc);
    const float* w_in = params.param(w.conv_in);
    float* dw_in = params.grad(w.conv_in);
    const float* xn = at(a.xn, r, c);
    float* dxn = at(g.dxn, r, c);
    be.linear_backward(dxn, dw_in, db, xn, w_in, n, c, c, false);
    be.linear_backward(dxn, dw_in + c * c, at(g.dc1, r, c), xn, w_in + c * c, n, c, c, true);
    be.linear_backward(dxn, dw_in + 2 * c * c, dxv, xn, w_in + 2 * c * c, n, c, c, true);
  }
  be.rmsnorm_backward(at(g.dtmp, r, c), params.grad(w.mixer_norm), at(g.dxn, r, c), at(resid[l], r, c),
                      params.param(w.mixer_norm), at(a.rstd1, r, 1), n, c);
  be.accumulate(at(g.dx, r, c), at(g.dtmp, r, c), static_cast<size_t>(n * c));
}

}  // namespace cadtrain::trainer
