// KV-cache generation (see generator.h). The per-token work is the model's forward for one row;
// the attention over the cache is a plain loop (one query row), which is all decoding needs.
#include "trainer/generator.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"
#include "kernels/backend.h"
#include "trainer/model.h"

namespace cadtrain::trainer {

struct Generator::Impl {
  Model& model;
  ModelDims d;
  int64_t max_len;
  int64_t pos = 0;
  std::vector<std::vector<float>> k_cache, v_cache;   // per layer [max_len, kv_dim]
  std::vector<std::vector<float>> conv_hist;          // per layer [K-1, C]: the last inputs yv
  std::vector<float> x, xn, q, k, v, o, tmp, b, cg, xv, g, gate, up, h, logits;
  std::vector<float> rstd;  // one per normalised row: up to q_heads rows

  Impl(Model& m, int64_t len) : model(m), d(m.dims()), max_len(len) {
    const auto L = static_cast<size_t>(d.n_layers);
    k_cache.resize(L);
    v_cache.resize(L);
    conv_hist.resize(L);
    for (size_t l = 0; l < L; ++l) {
      if (d.kinds[l] == config::ATTENTION) {
        k_cache[l].resize(static_cast<size_t>(max_len * d.kv_dim()));
        v_cache[l].resize(static_cast<size_t>(max_len * d.kv_dim()));
      } else {
        conv_hist[l].assign(static_cast<size_t>((d.conv_k - 1) * d.c), 0.0f);
      }
    }
    const auto c = static_cast<size_t>(d.c);
    for (auto* vec : {&x, &xn, &tmp, &b, &cg, &xv, &g}) vec->resize(c);
    q.resize(static_cast<size_t>(d.q_dim()));
    o.resize(static_cast<size_t>(d.q_dim()));
    k.resize(static_cast<size_t>(d.kv_dim()));
    v.resize(static_cast<size_t>(d.kv_dim()));
    for (auto* vec : {&gate, &up, &h}) vec->resize(static_cast<size_t>(d.ffn));
    logits.resize(static_cast<size_t>(d.vocab));
    rstd.resize(static_cast<size_t>(std::max<int64_t>(d.q_heads, 1)));
  }

  const float* w(const std::string& name) { return model.params().param(model.params().index_of(name)); }
  kernels::Backend& be() { return *backend; }
  kernels::Backend* backend = nullptr;

  void attention(size_t l, const std::string& p) {
    const auto eps = static_cast<float>(d.norm_eps);
    const auto theta = static_cast<float>(d.rope_theta);
    be().linear_forward(q.data(), xn.data(), w(p + "attn.wq"), 1, d.c, d.q_dim());
    be().linear_forward(k.data(), xn.data(), w(p + "attn.wk"), 1, d.c, d.kv_dim());
    be().linear_forward(v.data(), xn.data(), w(p + "attn.wv"), 1, d.c, d.kv_dim());
    if (d.qk_norm) {
      std::vector<float> pre(q);
      be().rmsnorm_forward(q.data(), rstd.data(), pre.data(), w(p + "attn.q_norm"), d.q_heads, d.head_dim, eps);
      pre = k;
      be().rmsnorm_forward(k.data(), rstd.data(), pre.data(), w(p + "attn.k_norm"), d.kv_heads, d.head_dim, eps);
    }
    const auto position = static_cast<int32_t>(pos);
    be().rope_forward(q.data(), &position, 1, d.q_heads, d.head_dim, theta);
    be().rope_forward(k.data(), &position, 1, d.kv_heads, d.head_dim, theta);
    std::copy(k.begin(), k.end(), k_cache[l].begin() + pos * d.kv_dim());
    std::copy(v.begin(), v.end(), v_cache[l].begin() + pos * d.kv_dim());
    const double scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
    const int64_t group = d.q_heads / d.kv_heads;
    std::vector<double> s(static_cast<size_t>(pos + 1));
    for (int64_t hq = 0; hq < d.q_heads; ++hq) {
      const float* qh = q.data() + hq * d.head_dim;
      const int64_t kvh = hq / group;
      double mx = -INFINITY;
      for (int64_t t = 0; t <= pos; ++t) {  // s_t = q . k_t * scale
        const float* kt = k_cache[l].data() + t * d.kv_dim() + kvh * d.head_dim;
        double dot = 0;
        for (int64_t i = 0; i < d.head_dim; ++i) dot += static_cast<double>(qh[i]) * kt[i];
        s[static_cast<size_t>(t)] = dot * scale;
        mx = std::max(mx, s[static_cast<size_t>(t)]);
      }
      double denom = 0;
      for (auto& st : s) denom += (st = std::exp(st - mx));
      float* oh = o.data() + hq * d.head_dim;
      for (int64_t i = 0; i < d.head_dim; ++i) {
        double acc = 0;
        for (int64_t t = 0; t <= pos; ++t) {
          acc += s[static_cast<size_t>(t)] * v_cache[l][static_cast<size_t>(t * d.kv_dim() + kvh * d.head_dim + i)];
        }
        oh[i] = static_cast<float>(acc / denom);
      }
    }
    be().linear_forward(tmp.data(), o.data(), w(p + "attn.wo"), 1, d.q_dim(), d.c);
  }

  void conv(size_t l, const std::string& p) {
    const int64_t c = d.c, kk = d.conv_k;
    const float* w_in = w(p + "conv.w_in");
    be().linear_forward(b.data(), xn.data(), w_in, 1, c, c);
    be().linear_forward(cg.data(), xn.data(), w_in + c * c, 1, c, c);
    be().linear_forward(xv.data(), xn.data(), w_in + 2 * c * c, 1, c, c);
    const float* kernel = w(p + "conv.kernel");  // [C, K]; tap K-1 multiplies the current input
    auto& hist = conv_hist[l];                   // rows: inputs at t-K+1 .. t-1
    for (int64_t ch = 0; ch < c; ++ch) {
      const float y_now = b[static_cast<size_t>(ch)] * xv[static_cast<size_t>(ch)];
      float z = kernel[ch * kk + kk - 1] * y_now;
      for (int64_t j = 0; j + 1 < kk; ++j) z += kernel[ch * kk + j] * hist[static_cast<size_t>(j * c + ch)];
      g[static_cast<size_t>(ch)] = cg[static_cast<size_t>(ch)] * z;
      for (int64_t j = 0; j + 2 < kk; ++j) hist[static_cast<size_t>(j * c + ch)] = hist[static_cast<size_t>((j + 1) * c + ch)];
      if (kk > 1) hist[static_cast<size_t>((kk - 2) * c + ch)] = y_now;
    }
    be().linear_forward(tmp.data(), g.data(), w(p + "conv.w_out"), 1, c, c);
  }

  void mlp(const std::string& p) {
    be().rmsnorm_forward(xn.data(), rstd.data(), x.data(), w(p + "mlp_norm"), 1, d.c, static_cast<float>(d.norm_eps));
    be().linear_forward(gate.data(), xn.data(), w(p + "mlp.w_gate"), 1, d.c, d.ffn);
    be().linear_forward(up.data(), xn.data(), w(p + "mlp.w_up"), 1, d.c, d.ffn);
    be().swiglu_forward(h.data(), gate.data(), up.data(), static_cast<size_t>(d.ffn));
    be().linear_forward(tmp.data(), h.data(), w(p + "mlp.w_down"), 1, d.ffn, d.c);
    be().accumulate(x.data(), tmp.data(), static_cast<size_t>(d.c));
  }
};

Generator::Generator(Model& model, int64_t max_len) : impl_(std::make_unique<Impl>(model, max_len)) {
  impl_->backend = &model.backend();
}
Generator::~Generator() = default;
int64_t Generator::length() const { return impl_->pos; }

const std::vector<float>& Generator::feed(uint32_t token) {
  Impl& m = *impl_;
  if (m.pos >= m.max_len) fail("generation reached its maximum length {}", m.max_len);
  if (token >= static_cast<uint32_t>(m.d.vocab)) fail("token {} >= vocab_size {}", token, m.d.vocab);
  m.be().embedding_forward(m.x.data(), &token, m.w("tok_embedding"), 1, m.d.c);
  for (size_t l = 0; l < static_cast<size_t>(m.d.n_layers); ++l) {
    const std::string p = fmt::format("layers.{}.", l);
    const bool attn = m.d.kinds[l] == config::ATTENTION;
    m.be().rmsnorm_forward(m.xn.data(), m.rstd.data(), m.x.data(), m.w(p + (attn ? "attn_norm" : "conv_norm")), 1,
                           m.d.c, static_cast<float>(m.d.norm_eps));
    attn ? m.attention(l, p) : m.conv(l, p);
    m.be().accumulate(m.x.data(), m.tmp.data(), static_cast<size_t>(m.d.c));
    m.mlp(p);
  }
  m.be().rmsnorm_forward(m.xn.data(), m.rstd.data(), m.x.data(), m.w("final_norm"), 1, m.d.c,
                         static_cast<float>(m.d.norm_eps));
  m.be().linear_forward(m.logits.data(), m.xn.data(), m.w(m.d.tied ? "tok_embedding" : "lm_head"), 1, m.d.c,
                        m.d.vocab);
  ++m.pos;
  return m.logits;
}

namespace {

uint32_t sample(const std::vector<float>& logits, const SamplingOptions& options, Rng& rng) {
  const auto v = static_cast<uint32_t>(logits.size());
  if (options.temperature <= 0) {
    return static_cast<uint32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  std::vector<uint32_t> ids(v);
  std::iota(ids.begin(), ids.end(), 0u);
  const uint32_t k = options.top_k == 0 ? v : std::min(options.top_k, v);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](uint32_t a, uint32_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(k);
  const double top = logits[ids[0]];
  double total = 0;
  for (uint32_t i = 0; i < k; ++i) total += (p[i] = std::exp((logits[ids[i]] - top) / options.temperature));
  double u = rng.uniform() * total;
  for (uint32_t i = 0; i < k; ++i) {
    if ((u -= p[i]) <= 0) return ids[i];
  }
  return ids[k - 1];
}

}  // namespace

std::vector<uint32_t> generate(Model& model, const std::vector<uint32_t>& prompt, uint32_t n_new,
                               const SamplingOptions& options) {
  if (prompt.empty()) fail("generation needs a prompt of at least one token");
  if (!std::isfinite(options.temperature) || options.temperature < 0) {
    fail("temperature {} must be a finite number >= 0 (0 = greedy)", options.temperature);
  }
  if (options.max_tokens != 0 && (prompt.size() > options.max_tokens || n_new > options.max_tokens - prompt.size())) {
    fail("prompt of {} tokens + {} new tokens exceeds the model's max_seq_len {}", prompt.size(), n_new,
         options.max_tokens);
  }
  Generator gen(model, static_cast<int64_t>(prompt.size() + n_new));
  Rng rng(options.seed);
  const std::vector<float>* logits = nullptr;
  for (const uint32_t t : prompt) logits = &gen.feed(t);
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < n_new; ++i) {
    out.push_back(sample(*logits, options, rng));
    if (i + 1 < n_new) logits = &gen.feed(out.back());
  }
  return out;
}

}  // namespace cadtrain::trainer
