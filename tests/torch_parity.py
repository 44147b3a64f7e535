#!/usr/bin/python3
"""Golden parity check of the cadtrain CPU model against an independent PyTorch implementation.

Usage: /usr/bin/python3 tests/torch_parity.py <dump.h5>     (the file tests/parity_dump.cc writes)

The reference below is written from the model's description (trainer/model.h, DESIGN.md section 2),
not translated from the C++ kernels: token embedding; per layer x += mixer(rmsnorm(x)) and
x += swiglu_mlp(rmsnorm(x)); mixer = GQA attention with interleaved-pair RoPE (optional per-head
RMSNorm of Q and K first) or the LFM2-style gated short convolution; final RMSNorm; LM head; mean
cross-entropy over the loss mask. It runs in float64 and takes gradients with autograd, so the
differences measured are the C++ model's fp32 error (plus any bug).

Checks and tolerances. The C++ model is fp32 (norm and softmax sums in double); measured on the
three cases (x86-64, OpenBLAS; identical for 1, 2 and 7 threads) the worst errors were: loss 5e-8
relative, per-row loss 1.0e-6 of the largest row loss, logits 2.1e-6 of the largest |logit|,
gradients 9.3e-6 of the tensor's largest |gradient| (typically 1e-6 to 5e-6). The bounds leave a
5-20x margin for other BLAS kernels, and stay below what real errors produce: a wrong RoPE sign or
pair layout, GQA head map, conv tap order or sequence boundary gives O(1) relative errors; RoPE
angles in float at positions ~3000 gives 4e-4, a dropped norm eps 1.6e-4 to 1.4e-3, one weight
entry off by 1e-3 trips logits and 5 gradients.
  loss              |loss - ref| <= 1e-6 * |ref|                 (both evaluate and forward_backward)
  per-row loss      max |row - ref| <= 1e-5 * max |ref row|
  logits            max |logit - ref| <= 2e-5 * max |ref logit|
  each gradient     max |g - ref| <= ATOL + RTOL * max |ref g|,  ATOL = 1e-7, RTOL = 5e-5
                    (ATOL only matters for a tensor whose gradient is ~0 everywhere)
Exits 1 with a loud message on any mismatch, on a tensor missing from either side, or on a file
that does not have the expected layout.
"""
import sys

try:
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # loud, with the fix
    sys.stderr.write(f"torch_parity: FAILED: cannot import {e.name!r} with {sys.executable}: "
                     "run launch/install_deps.sh (installs python3-torch and python3-h5py)\n")
    sys.exit(1)

LOSS_RTOL = 1e-6
ROW_LOSS_RTOL = 1e-5
LOGITS_RTOL = 2e-5
GRAD_ATOL = 1e-7
GRAD_RTOL = 5e-5

ATTENTION, SHORT_CONV = 0, 1
DT = torch.float64


def attr_int(f, name):
    return int(np.asarray(f.attrs[name]).reshape(-1)[0])


def attr_float(f, name):
    return float(np.asarray(f.attrs[name]).reshape(-1)[0])


def attr_strings(f, name):
    return [s.decode() if isinstance(s, bytes) else str(s) for s in np.asarray(f.attrs[name]).reshape(-1)]


class Config:
    def __init__(self, f):
        self.case = attr_strings(f, "case")[0]
        self.vocab = attr_int(f, "vocab_size")
        self.c = attr_int(f, "d_model")
        self.n_layers = attr_int(f, "n_layers")
        self.hq = attr_int(f, "n_heads")
        self.hkv = attr_int(f, "n_kv_heads")
        self.d = attr_int(f, "head_dim")
        self.ffn = attr_int(f, "ffn_hidden")
        self.conv_k = attr_int(f, "conv_kernel")
        self.theta = attr_float(f, "rope_theta")
        self.eps = attr_float(f, "norm_eps")
        self.tied = attr_int(f, "tie_embeddings") != 0
        self.qk_norm = attr_int(f, "qk_norm") != 0
        self.kinds = [int(k) for k in np.asarray(f.attrs["layer_kinds"]).reshape(-1)]
        if len(self.kinds) != self.n_layers:
            raise ValueError(f"layer_kinds has {len(self.kinds)} entries for {self.n_layers} layers")


def expected_shapes(cfg):
    """Every parameter tensor the model should declare, with its shape ([out, in] for matrices)."""
    c, qd, kvd = cfg.c, cfg.hq * cfg.d, cfg.hkv * cfg.d
    shapes = {"tok_embedding": (cfg.vocab, c)}
    for l, kind in enumerate(cfg.kinds):
        p = f"layers.{l}."
        if kind == ATTENTION:
            shapes.update({p + "attn_norm": (c,), p + "attn.wq": (qd, c), p + "attn.wk": (kvd, c),
                           p + "attn.wv": (kvd, c), p + "attn.wo": (c, qd)})
            if cfg.qk_norm:
                shapes.update({p + "attn.q_norm": (cfg.d,), p + "attn.k_norm": (cfg.d,)})
        elif kind == SHORT_CONV:
            shapes.update({p + "conv_norm": (c,), p + "conv.w_in": (3 * c, c),
                           p + "conv.kernel": (c, cfg.conv_k), p + "conv.w_out": (c, c)})
        else:
            raise ValueError(f"layer {l}: unknown layer kind {kind}")
        shapes.update({p + "mlp_norm": (c,), p + "mlp.w_gate": (cfg.ffn, c), p + "mlp.w_up": (cfg.ffn, c),
                       p + "mlp.w_down": (c, cfg.ffn)})
    shapes["final_norm"] = (c,)
    if not cfg.tied:
        shapes["lm_head"] = (cfg.vocab, c)
    return shapes


# ---- the reference model (float64) ----

def rmsnorm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def rope(x, pos, theta):
    """x [N, H, D]: rotate each pair (x[2i], x[2i+1]) by the angle pos * theta^(-2i/D)."""
    d = x.shape[-1]
    i = torch.arange(d // 2, dtype=DT)
    inv_freq = theta ** (-2.0 * i / d)                               # [D/2]
    angle = pos.to(DT)[:, None] * inv_freq[None, :]                  # [N, D/2]
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return torch.stack([r0, r1], dim=-1).reshape(x.shape)           # re-interleave the pairs


def attention_mixer(cfg, p, prefix, h, pos, cu):
    n = h.shape[0]
    q = (h @ p[prefix + "attn.wq"].T).reshape(n, cfg.hq, cfg.d)
    k = (h @ p[prefix + "attn.wk"].T).reshape(n, cfg.hkv, cfg.d)
    v = (h @ p[prefix + "attn.wv"].T).reshape(n, cfg.hkv, cfg.d)
    if cfg.qk_norm:
        q = rmsnorm(q, p[prefix + "attn.q_norm"], cfg.eps)
        k = rmsnorm(k, p[prefix + "attn.k_norm"], cfg.eps)
    q, k = rope(q, pos, cfg.theta), rope(k, pos, cfg.theta)
    group = cfg.hq // cfg.hkv
    # query head h uses kv head h // group: each kv head repeated `group` times in a row
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    outs = []
    for s in range(len(cu) - 1):
        a, b = cu[s], cu[s + 1]
        t = b - a
        qs, ks, vs = q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)  # [H, T, D]
        scores = qs @ ks.transpose(1, 2) / (cfg.d ** 0.5)                                  # [H, T, T]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        outs.append((torch.softmax(scores, dim=-1) @ vs).transpose(0, 1))                  # [T, H, D]
    o = torch.cat(outs, dim=0).reshape(n, cfg.hq * cfg.d)
    return o @ p[prefix + "attn.wo"].T


def short_conv_mixer(cfg, p, prefix, h, cu):
    c, kk = cfg.c, cfg.conv_k
    bcx = h @ p[prefix + "conv.w_in"].T            # [N, 3C]: B, then C (gate), then x
    bb, cg, xv = bcx[:, :c], bcx[:, c:2 * c], bcx[:, 2 * c:]
    y = bb * xv
    w = p[prefix + "conv.kernel"]                   # [C, K]
    zs = []
    for s in range(len(cu) - 1):
        ys = y[cu[s]:cu[s + 1]]                     # [T, C]
        t = ys.shape[0]
        padded = torch.cat([torch.zeros(kk - 1, c, dtype=DT), ys], dim=0)   # zero history
        # z[t] = sum_j w[:, j] * y[t - K + 1 + j]  (padded row t + j is y[t - K + 1 + j])
        zs.append(sum(w[:, j] * padded[j:j + t] for j in range(kk)))
    z = torch.cat(zs, dim=0)
    return (cg * z) @ p[prefix + "conv.w_out"].T


def mlp(p, prefix, h):
    gate = h @ p[prefix + "mlp.w_gate"].T
    up = h @ p[prefix + "mlp.w_up"].T
    return (F.silu(gate) * up) @ p[prefix + "mlp.w_down"].T


def forward_logits(cfg, p, tokens, pos, cu):
    x = p["tok_embedding"][tokens]
    for l, kind in enumerate(cfg.kinds):
        pre = f"layers.{l}."
        if kind == ATTENTION:
            x = x + attention_mixer(cfg, p, pre, rmsnorm(x, p[pre + "attn_norm"], cfg.eps), pos, cu)
        else:
            x = x + short_conv_mixer(cfg, p, pre, rmsnorm(x, p[pre + "conv_norm"], cfg.eps), cu)
        x = x + mlp(p, pre, rmsnorm(x, p[pre + "mlp_norm"], cfg.eps))
    xf = rmsnorm(x, p["final_norm"], cfg.eps)
    head = p["tok_embedding"] if cfg.tied else p["lm_head"]
    return xf @ head.T


# ---- comparison ----

def runs(values):
    """[0, 1, 2, 7, 8] -> '0..2,7..8': the consecutive runs of a sequence's positions."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            out.append(f"{values[start]}..{values[i - 1]}" if i - 1 > start else f"{values[start]}")
            start = i
    return ",".join(out)


class Report:
    def __init__(self):
        self.failures = []

    def line(self, name, err, bound, extra=""):
        ok = bool(np.isfinite(err)) and err <= bound
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<28} err {err:.3e}  bound {bound:.3e}  {extra}")
        if not ok:
            self.failures.append(f"{name}: error {err:.3e} > bound {bound:.3e} {extra}")

    def missing(self, what):
        print(f"  FAIL {what}")
        self.failures.append(what)


def main(path):
    torch.set_grad_enabled(True)
    with h5py.File(path, "r") as f:
        cfg = Config(f)
        names = attr_strings(f, "param_names")
        shapes = expected_shapes(cfg)
        rep = Report()
        print(f"torch_parity {cfg.case}: vocab {cfg.vocab}, d_model {cfg.c}, layers {cfg.kinds} "
              f"(0 attention, 1 short conv), heads {cfg.hq}:{cfg.hkv} x {cfg.d}, ffn {cfg.ffn}, "
              f"conv_k {cfg.conv_k}, theta {cfg.theta:g}, eps {cfg.eps:g}, tied {cfg.tied}, qk_norm {cfg.qk_norm}")

        # The model must declare exactly the tensors the description implies, and dump all of them.
        for name in sorted(set(shapes) - set(names)):
            rep.missing(f"parameter {name} {shapes[name]} expected but the model does not declare it")
        for name in sorted(set(names) - set(shapes)):
            rep.missing(f"parameter {name} declared by the model but not in the reference")
        params, grads = {}, {}
        for name in names:
            for group, into in (("params", params), ("grads", grads)):
                if name not in f[group]:
                    rep.missing(f"/{group}/{name} missing from the dump")
                    continue
                arr = np.asarray(f[group][name], dtype=np.float32)
                if name in shapes and arr.shape != shapes[name]:
                    rep.missing(f"/{group}/{name} has shape {arr.shape}, expected {shapes[name]}")
                    continue
                into[name] = arr
        if rep.failures:
            return fail(cfg.case, rep.failures)

        b = f["batch"]
        tokens = torch.from_numpy(np.asarray(b["tokens"]).astype(np.int64))
        targets = torch.from_numpy(np.asarray(b["targets"]).astype(np.int64))
        mask = torch.from_numpy(np.asarray(b["loss_mask"]).astype(np.float64))
        pos = torch.from_numpy(np.asarray(b["positions"]).astype(np.int64))
        cu = [int(v) for v in np.asarray(b["cu_seqlens"])]
        logits_cpp = np.asarray(f["logits"], dtype=np.float64)
        row_loss_cpp = np.asarray(f["row_loss"], dtype=np.float64)
        loss_cpp = attr_float(f, "mean_loss")
        fb_loss_cpp = attr_float(f, "fb_loss_sum") / attr_float(f, "fb_weight_sum")
        weight_cpp = attr_float(f, "weight_sum")

    n = tokens.shape[0]
    lengths = [cu[s + 1] - cu[s] for s in range(len(cu) - 1)]
    print(f"  batch: {n} tokens, sequence lengths {lengths}, positions "
          + " | ".join(runs(pos[cu[s]:cu[s + 1]].tolist()) for s in range(len(cu) - 1))
          + f", {int(mask.sum())} unmasked")
    if cu[0] != 0 or cu[-1] != n or any(t < 0 for t in lengths):
        return fail(cfg.case, [f"bad cu_seqlens {cu} for {n} tokens"])

    p = {k: torch.tensor(v, dtype=DT, requires_grad=True) for k, v in params.items()}
    logits = forward_logits(cfg, p, tokens, pos, cu)
    safe_targets = torch.where(mask != 0, targets, torch.zeros_like(targets))  # masked targets: any value
    row_loss = F.cross_entropy(logits, safe_targets, reduction="none") * (mask != 0)
    weight = mask.sum()
    loss = (row_loss * mask).sum() / weight
    loss.backward()

    ref = float(loss)
    print(f"  loss: ref {ref:.10f}  evaluate {loss_cpp:.10f}  forward_backward {fb_loss_cpp:.10f}")
    rep.line("loss (evaluate)", abs(loss_cpp - ref), LOSS_RTOL * abs(ref), "relative bound")
    rep.line("loss (forward_backward)", abs(fb_loss_cpp - ref), LOSS_RTOL * abs(ref), "relative bound")
    if weight_cpp != float(weight):
        rep.missing(f"weight_sum {weight_cpp} != sum of the mask {float(weight)}")
    rl = row_loss.detach().numpy()
    rl_scale = float(np.max(np.abs(rl)))
    rep.line("row_loss", float(np.max(np.abs(row_loss_cpp - rl))), ROW_LOSS_RTOL * rl_scale,
             f"(max |row loss| {rl_scale:.3g})")
    lg = logits.detach().numpy()
    if logits_cpp.shape != lg.shape:
        rep.missing(f"logits have shape {logits_cpp.shape}, expected {lg.shape}")
    else:
        scale = float(np.max(np.abs(lg)))
        rep.line("logits", float(np.max(np.abs(logits_cpp - lg))), LOGITS_RTOL * scale, f"(max |logit| {scale:.3g})")

    print(f"  gradients (bound = {GRAD_ATOL:g} + {GRAD_RTOL:g} * max|ref|):")
    for name in names:
        g_ref = p[name].grad
        if g_ref is None:
            rep.missing(f"grad {name}: the reference gives no gradient (unused parameter)")
            continue
        g_ref = g_ref.numpy()
        scale = float(np.max(np.abs(g_ref)))
        err = float(np.max(np.abs(grads[name].astype(np.float64) - g_ref)))
        rep.line(name, err, GRAD_ATOL + GRAD_RTOL * scale, f"max|ref| {scale:.3e}  rel {err / max(scale, 1e-30):.2e}")

    if rep.failures:
        return fail(cfg.case, rep.failures)
    print(f"torch_parity {cfg.case}: PASSED ({len(names)} gradients, loss, logits)")
    return 0


def fail(case, failures):
    bar = "!" * 78
    sys.stderr.write(f"\n{bar}\ntorch_parity {case}: FAILED, the C++ model disagrees with the PyTorch reference:\n")
    for msg in failures:
        sys.stderr.write(f"  - {msg}\n")
    sys.stderr.write(f"{bar}\n")
    return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: /usr/bin/python3 tests/torch_parity.py <dump.h5>\n")
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1]))
    except (OSError, KeyError, ValueError) as e:
        sys.stderr.write(f"torch_parity: FAILED: cannot read {sys.argv[1]}: {e}\n")
        sys.exit(1)
