// The model's blocks, forward and backward: GQA attention, gated short convolution, SwiGLU MLP.
// Conventions: resid[l] is the layer input, a.x_mid the stream after the mixer, resid[l+1] the
// layer output; grads.dx holds the gradient of the stream at the point the backward has reached.
#include <cmath>

#include "trainer/model_impl.h"

namespace cadtrain::trainer {
namespace {

kernels::AttentionShape attention_shape(const ModelDims& d, int64_t n) {
  return kernels::AttentionShape{n, d.q_heads, d.kv_heads, d.head_dim,
                                 static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.head_dim)))};
}

kernels::SequenceLayout layout_of(const Batch& batch) { return {batch.cu_seqlens, batch.n_seqs}; }

}  // namespace

void Model::Impl::attention_forward(size_t l, const Batch& batch, LayerActs& a) {
  const LayerWeights& w = layers[l];
  const int64_t n = batch.n, c = dims.c, qd = dims.q_dim(), kvd = dims.kv_dim(), d = dims.head_dim;
  const auto eps = static_cast<float>(dims.norm_eps);
  const auto theta = static_cast<float>(dims.rope_theta);
  be.rmsnorm_forward(a.xn, a.rstd1, resid[l], params.param(w.mixer_norm), n, c, eps);
  float* q_lin = dims.qk_norm ? a.q_pre : a.q;
  float* k_lin = dims.qk_norm ? a.k_pre : a.k;
  be.linear_forward(q_lin, a.xn, params.param(w.wq), n, c, qd);  // [N, Hq*D]
  be.linear_forward(k_lin, a.xn, params.param(w.wk), n, c, kvd);
  be.linear_forward(a.v, a.xn, params.param(w.wv), n, c, kvd);
  if (dims.qk_norm) {  // per-head RMSNorm: rows are (token, head) pairs of width D
    be.rmsnorm_forward(a.q, a.rstd_q, a.q_pre, params.param(w.q_norm), n * dims.q_heads, d, eps);
    be.rmsnorm_forward(a.k, a.rstd_k, a.k_pre, params.param(w.k_norm), n * dims.kv_heads, d, eps);
  }
  be.rope_forward(a.q, batch.positions, n, dims.q_heads, d, theta);
  be.rope_forward(a.k, batch.positions, n, dims.kv_heads, d, theta);
  const double t0 = now_seconds();
  attention.forward(a.o, a.lse, a.q, a.k, a.v, attention_shape(dims, n), layout_of(batch));
  times.core_attention += now_seconds() - t0;
  be.linear_forward(a.x_mid, a.o, params.param(w.wo), n, qd, c);
  be.accumulate(a.x_mid, resid[l], static_cast<size_t>(n * c));
}

void Model::Impl::attention_backward(size_t l, const Batch& batch, LayerActs& a) {
  const LayerWeights& w = layers[l];
  GradScratch& g = grads;
  const int64_t n = batch.n, c = dims.c, qd = dims.q_dim(), kvd = dims.kv_dim(), d = dims.head_dim;
  const auto theta = static_cast<float>(dims.rope_theta);
  be.linear_backward(g.do_, params.grad(w.wo), g.dx, a.o, params.param(w.wo), n, qd, c, false);
  const double t0 = now_seconds();
  attention.backward(g.dq, g.dk, g.dv, g.do_, a.q, a.k, a.v, a.o, a.lse, attention_shape(dims, n),
                     layout_of(batch));
  times.core_attention += now_seconds() - t0;
  be.rope_backward(g.dq, batch.positions, n, dims.q_heads, d, theta);
  be.rope_backward(g.dk, batch.positions, n, dims.kv_heads, d, theta);
  const float* dq = g.dq;
  const float* dk = g.dk;
  if (dims.qk_norm) {
    be.rmsnorm_backward(g.dc1, params.grad(w.q_norm), g.dq, a.q_pre, params.param(w.q_norm), a.rstd_q,
                        n * dims.q_heads, d);
    be.rmsnorm_backward(g.dc2, params.grad(w.k_norm), g.dk, a.k_pre, params.param(w.k_norm), a.rstd_k,
                        n * dims.kv_heads, d);
    dq = g.dc1;
    dk = g.dc2;
  }
  be.linear_backward(g.dxn, params.grad(w.wq), dq, a.xn, params.param(w.wq), n, c, qd, false);
  be.linear_backward(g.dxn, params.grad(w.wk), dk, a.xn, params.param(w.wk), n, c, kvd, true);
  be.linear_backward(g.dxn, params.grad(w.wv), g.dv, a.xn, params.param(w.wv), n, c, kvd, true);
  be.rmsnorm_backward(g.dtmp, params.grad(w.mixer_norm), g.dxn, resid[l], params.param(w.mixer_norm), a.rstd1, n,
                      c);
  be.accumulate(g.dx, g.dtmp, static_cast<size_t>(n * c));
}

void Model::Impl::conv_forward(size_t l, const Batch& batch, LayerActs& a) {
  const LayerWeights& w = layers[l];
  const int64_t n = batch.n, c = dims.c;
  const auto nc = static_cast<size_t>(n * c);
  be.rmsnorm_forward(a.xn, a.rstd1, resid[l], params.param(w.mixer_norm), n, c, static_cast<float>(dims.norm_eps));
  const float* w_in = params.param(w.conv_in);  // [3C, C]: rows of B, then C (gate), then x
  be.linear_forward(a.b, a.xn, w_in, n, c, c);
  be.linear_forward(a.cg, a.xn, w_in + c * c, n, c, c);
  be.linear_forward(a.xv, a.xn, w_in + 2 * c * c, n, c, c);
  be.mul_forward(a.yv, a.b, a.xv, nc);  // y = B * x
  be.short_conv_forward(a.z, a.yv, params.param(w.conv_kernel), batch.cu_seqlens, batch.n_seqs, c, dims.conv_k);
  be.mul_forward(a.g, a.cg, a.z, nc);  // C * conv(y)
  be.linear_forward(a.x_mid, a.g, params.param(w.conv_out), n, c, c);
  be.accumulate(a.x_mid, resid[l], nc);
}

void Model::Impl::conv_backward(size_t l, const Batch& batch, LayerActs& a) {
  const LayerWeights& w = layers[l];
  GradScratch& g = grads;
  const int64_t n = batch.n, c = dims.c;
  const auto nc = static_cast<size_t>(n * c);
  float* dg = g.do_;
  float* dcg = g.dc1;
  float* dz = g.dc2;
  float* dyv = g.dc3;
  be.linear_backward(dg, params.grad(w.conv_out), g.dx, a.g, params.param(w.conv_out), n, c, c, false);
  be.mul_backward(dcg, dz, dg, a.cg, a.z, nc);
  be.short_conv_backward(dyv, params.grad(w.conv_kernel), dz, a.yv, params.param(w.conv_kernel), batch.cu_seqlens,
                         batch.n_seqs, c, dims.conv_k);
  float* db = g.dc2;   // dz is consumed
  float* dxv = g.do_;  // dg is consumed
  be.mul_backward(db, dxv, dyv, a.b, a.xv, nc);
  const float* w_in = params.param(w.conv_in);
  float* dw_in = params.grad(w.conv_in);
  be.linear_backward(g.dxn, dw_in, db, a.xn, w_in, n, c, c, false);
  be.linear_backward(g.dxn, dw_in + c * c, dcg, a.xn, w_in + c * c, n, c, c, true);
  be.linear_backward(g.dxn, dw_in + 2 * c * c, dxv, a.xn, w_in + 2 * c * c, n, c, c, true);
  be.rmsnorm_backward(g.dtmp, params.grad(w.mixer_norm), g.dxn, resid[l], params.param(w.mixer_norm), a.rstd1, n,
                      c);
  be.accumulate(g.dx, g.dtmp, nc);
}

void Model::Impl::mlp_forward(size_t l, const Batch& batch, LayerActs& a) {
  const LayerWeights& w = layers[l];
  const int64_t n = batch.n, c = dims.c, f = dims.ffn;
  be.rmsnorm_forward(a.xn2, a.rstd2, a.x_mid, params.param(w.mlp_norm), n, c, static_cast<float>(dims.norm_eps));
  be.linear_forward(a.gate, a.xn2, params.param(w.w_gate), n, c, f);
  be.linear_forward(a.up, a.xn2, params.param(w.w_up), n, c, f);
  be.swiglu_forward(a.h, a.gate, a.up, static_cast<size_t>(n * f));
  be.linear_forward(resid[l + 1], a.h, params.param(w.w_down), n, f, c);
  be.accumulate(resid[l + 1], a.x_mid, static_cast<size_t>(n * c));
}

void Model::Impl::mlp_backward(size_t l, const Batch& batch, LayerActs& a) {
  const LayerWeights& w = layers[l];
  GradScratch& g = grads;
  const int64_t n = batch.n, c = dims.c, f = dims.ffn;
  be.linear_backward(g.dh, params.grad(w.w_down), g.dx, a.h, params.param(w.w_down), n, f, c, false);
  be.swiglu_backward(g.dgate, g.dup, g.dh, a.gate, a.up, static_cast<size_t>(n * f));
  be.linear_backward(g.dxn, params.grad(w.w_gate), g.dgate, a.xn2, params.param(w.w_gate), n, c, f, false);
  be.linear_backward(g.dxn, params.grad(w.w_up), g.dup, a.xn2, params.param(w.w_up), n, c, f, true);
  be.rmsnorm_backward(g.dtmp, params.grad(w.mlp_norm), g.dxn, a.x_mid, params.param(w.mlp_norm), a.rstd2, n, c);
  be.accumulate(g.dx, g.dtmp, static_cast<size_t>(n * c));
}

}  // namespace cadtrain::trainer
