#!/usr/bin/python3
"""PyTorch reference for bench/train_bench.cc: the same Llama-style model, step and FLOP counting.

The model mirrors cadtrain's (trainer/model.cc, model_blocks.cc): token embedding; per layer
RMSNorm -> attention (Q, K, V, O linears without bias, interleaved-pair RoPE on Q and K, causal
softmax(Q K^T / sqrt(D)) V written out with a mask, as PyTorch 1.13 has no fused attention) ->
residual, RMSNorm -> SwiGLU MLP (w_down(silu(w_gate x) * w_up x)) -> residual; final RMSNorm; LM head
tied to the embedding; F.cross_entropy over the [B*T, V] logits. fp32 throughout, B random sequences
of T tokens (fixed seed, the same batch every step, as the C++ side). One step = zero grads +
forward + backward + clip_grad_norm_ + AdamW step, as train_bench's zero + forward_backward +
grad_norm + AdamW.

Run it with Debian's interpreter, which has torch 1.13 (the pyenv python3 on PATH has none):
    /usr/bin/python3 bench/torch_train_bench.py [--preset tiny|gpt2-small] [--batch B] [--seq T]
        [--steps N] [--warmup W] [--threads P] [--json out.json]
"""

import argparse
import json
import math
import os
import resource
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=["tiny", "gpt2-small"], default="gpt2-small")
    p.add_argument("--batch", type=int, default=0, help="sequences per micro-batch (default 4)")
    p.add_argument("--seq", type=int, default=0, help="tokens per sequence (default 1024)")
    p.add_argument("--ffn", type=int, default=0, help="override the SwiGLU hidden width")
    p.add_argument("--steps", type=int, default=3, help="timed steps (mean is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sgemm-size", type=int, default=2048, help="n of the n^3 matmul reference")
    p.add_argument("--json", default="", help="also write the summary as JSON here")
    a = p.parse_args()
    if a.steps <= 0 or a.warmup < 0 or a.batch < 0 or a.seq < 0 or a.threads < 0 or a.ffn < 0:
        p.error("--steps must be > 0; --warmup, --batch, --seq, --ffn and --threads >= 0")
    return a


ARGS = parse_args()
if ARGS.threads > 0:
    # Before torch loads: OpenBLAS (Debian's pthread build, which torch's matmuls call) reads its
    # thread count at load time, and torch.set_num_threads does not reach it.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def preset_dims(a):
    """The model of a preset: the same numbers as train_bench.cc's preset_model."""
    if a.preset == "tiny":  # configs/tiny_cpu.pbtxt = the schema defaults; ffn by the Llama rule
        d = dict(vocab=256, c=256, layers=4, heads=4, kv_heads=4, ffn=704, theta=10000.0, eps=1e-5, lr=3e-3)
    else:  # GPT-2 124M's shape in Llama-style blocks, SwiGLU 3072 wide
        d = dict(vocab=50257, c=768, layers=12, heads=12, kv_heads=12, ffn=3072, theta=10000.0, eps=1e-5, lr=6e-4)
    if a.ffn > 0:
        d["ffn"] = a.ffn
    d["head_dim"] = d["c"] // d["heads"]
    return d


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w over the last dimension."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(t, d, theta):
    """cos and sin [T, D/2] of angle pos * theta^(-2i/D), computed in double as the C++ kernel."""
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """Rotates the interleaved pairs (x[2i], x[2i+1]) of x [B, T, H, D]."""
    b, t, h, d = x.shape
    xp = x.view(b, t, h, d // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).view(b, t, h, d)


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        c, hd = d["c"], d["head_dim"]
        self.h, self.kv, self.hd = d["heads"], d["kv_heads"], hd
        self.wq = nn.Linear(c, self.h * hd, bias=False)
        self.wk = nn.Linear(c, self.kv * hd, bias=False)
        self.wv = nn.Linear(c, self.kv * hd, bias=False)
        self.wo = nn.Linear(self.h * hd, c, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = apply_rope(self.wq(x).view(b, t, self.h, self.hd), cos, sin).transpose(1, 2)  # (B, H, T, D)
        k = apply_rope(self.wk(x).view(b, t, self.kv, self.hd), cos, sin).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.wv(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        if self.kv != self.h:  # grouped-query attention: query head h reads kv head h // group
            k = k.repeat_interleave(self.h // self.kv, dim=1)
            v = v.repeat_interleave(self.h // self.kv, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))  # (B, H, T, D) @ (B, H, D, T)
        att = att.masked_fill(mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v  # (B, H, T, T) @ (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.h * self.hd))


class SwiGLU(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w_gate = nn.Linear(d["c"], d["ffn"], bias=False)
        self.w_up = nn.Linear(d["c"], d["ffn"], bias=False)
        self.w_down = nn.Linear(d["ffn"], d["c"], bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn_norm = RMSNorm(d["c"], d["eps"])
        self.attn = Attention(d)
        self.mlp_norm = RMSNorm(d["c"], d["eps"])
        self.mlp = SwiGLU(d)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, d, t):
        super().__init__()
        self.tok_embedding = nn.Embedding(d["vocab"], d["c"])
        self.layers = nn.ModuleList(Block(d) for _ in range(d["layers"]))
        self.final_norm = RMSNorm(d["c"], d["eps"])
        cos, sin = rope_tables(t, d["head_dim"], d["theta"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("mask", torch.ones(t, t, dtype=torch.bool).triu(1), persistent=False)
        # cadtrain's init: normal(0, 0.02), residual outputs scaled by 1/sqrt(2 L), norms 1.
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * d["layers"]) if name.endswith(("wo.weight", "w_down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def trunk(self, tokens):
        x = self.tok_embedding(tokens)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin, self.mask)
        return self.final_norm(x)

    def loss(self, h, targets):
        logits = F.linear(h, self.tok_embedding.weight)  # tied head: [B, T, V]
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def matmul_gflops(n, repeats=3):
    """Best of `repeats` n^3 fp32 products through torch.mm (after one warm-up): torch's BLAS rate."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g) - 0.5
    b = torch.rand(n, n, generator=g) - 0.5
    c = torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def main():
    a = ARGS
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = preset_dims(a)
    B = a.batch or 4
    T = a.seq or 1024
    N = B * T
    model = Model(d, T)
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    # torch 1.13's AdamW has foreach (multi-tensor) but no fused variant (fused arrived in 2.0).
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=d["lr"], betas=(0.9, 0.95), eps=1e-8, foreach=True)
    g = torch.Generator().manual_seed(a.seed)
    tokens = torch.randint(0, d["vocab"], (B, T), generator=g)
    targets = torch.randint(0, d["vocab"], (B, T), generator=g)

    params = sum(p.numel() for p in model.parameters())  # the tied head counted once
    head = d["vocab"] * d["c"]
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n) + head
    pairs = B * T * (T + 1) // 2
    attn_unit = pairs * d["heads"] * d["head_dim"] * d["layers"]
    flops_causal = 6.0 * matmul_params * N + 12.0 * attn_unit
    flops_peers = 6.0 * params * N + 12.0 * d["layers"] * T * T * d["c"] * B

    print("| parameter | value |\n|---|---|")
    print(f"| implementation | PyTorch {torch.__version__} eager, autograd |")
    print(f"| backend | CPU, {torch.get_num_threads()} threads, {torch.__config__.parallel_info().splitlines()[-1].strip()} |")
    print("| core attention | manual softmax(Q K^T / sqrt(D)) V with a causal mask, [B, H, T, T] |")
    print(f"| OMP_WAIT_POLICY | {os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp spins, then sleeps)')} |")
    print(f"| preset | {a.preset} |")
    print(f"| model | {d['layers']} layers, d_model {d['c']}, {d['heads']} heads ({d['kv_heads']} kv) of {d['head_dim']}, "
          f"SwiGLU ffn {d['ffn']}, vocab {d['vocab']}, tied head |")
    print(f"| parameters | {params} ({params / 1e6:.1f} M; {matmul_params / 1e6:.1f} M in matmuls) |")
    print(f"| micro-batch | {B} sequences x {T} tokens = {N} tokens (random, seed {a.seed}) |")
    print(f"| step | zero_grad(set_to_none) + forward + backward + clip_grad_norm_(1.0) + AdamW(foreach, lr {d['lr']}) |")
    print(f"| steps | {a.warmup} warm-up, {a.steps} timed (mean) |")
    print(f"| FLOPs / step | {flops_causal / 1e9:.1f} G (causal); {flops_peers / 1e9:.1f} G (PEERS.md: 6 P N + 12 L T^2 C B) |\n",
          flush=True)

    # Measured before and after the steps, the higher kept (either may be caught by other load).
    sgemm_before = matmul_gflops(a.sgemm_size)
    sums = dict(step=0.0, trunk=0.0, loss=0.0, backward=0.0, optimizer=0.0)
    first_loss = last_loss = 0.0
    for it in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        h = model.trunk(tokens)
        t1 = time.perf_counter()
        loss = model.loss(h, targets)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        t4 = time.perf_counter()
        lv = float(loss)
        if not (math.isfinite(lv) and math.isfinite(norm)):
            sys.exit(f"torch_train_bench: step {it}: loss {lv} or grad norm {norm} not finite")
        if it == 0:
            first_loss = lv
        last_loss = lv
        timed = it >= a.warmup
        i, n = (it - a.warmup + 1, a.steps) if timed else (it + 1, a.warmup)
        print(f"{'step' if timed else 'warm-up'} {i}/{n} | loss {lv:.4f} | norm {norm:.3f} | {(t4 - t0) * 1e3:.0f} ms | "
              f"{N / (t4 - t0):.0f} tok/s", flush=True)
        if timed:
            sums["step"] += t4 - t0
            sums["trunk"] += t1 - t0
            sums["loss"] += t2 - t1
            sums["backward"] += t3 - t2
            sums["optimizer"] += t4 - t3

    sgemm_after = matmul_gflops(a.sgemm_size)
    sgemm = max(sgemm_before, sgemm_after)
    print(f"\ntorch.mm {a.sgemm_size}^3: {sgemm_before:.1f} GFLOP/s before the steps, {sgemm_after:.1f} after; "
          f"MFU uses {sgemm:.1f}")

    k = 1.0 / a.steps
    step_s = sums["step"] * k
    tok_s = N / step_s
    gf_causal = flops_causal / step_s / 1e9
    gf_peers = flops_peers / step_s / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0)
    print()
    print("| impl | preset | B x T | threads | ms/step | tok/s | GFLOP/s (causal) | MFU (causal) | GFLOP/s (PEERS conv.) | "
          "MFU (PEERS conv.) | sgemm GFLOP/s | loss first -> last | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| pytorch {torch.__version__} | {a.preset} | {B} x {T} | {torch.get_num_threads()} | {step_s * 1e3:.1f} | "
          f"{tok_s:.1f} | {gf_causal:.1f} | {100 * gf_causal / sgemm:.1f}% | {gf_peers:.1f} | {100 * gf_peers / sgemm:.1f}% | "
          f"{sgemm:.1f} | {first_loss:.4f} -> {last_loss:.4f} | {rss:.2f} |")

    # Phases: autograd runs the whole backward in one call, so it is one row here.
    trunk_fwd = 2.0 * (matmul_params - head) * N + 4.0 * attn_unit
    rows = [
        ("forward trunk (embedding .. final norm)", sums["trunk"] * k, trunk_fwd),
        ("LM head + cross-entropy forward", sums["loss"] * k, 2.0 * head * N),
        ("backward (all, autograd)", sums["backward"] * k, flops_causal - trunk_fwd - 2.0 * head * N),
        ("optimizer (clip_grad_norm_, AdamW)", sums["optimizer"] * k, 0.0),
        ("step", step_s, flops_causal),
    ]
    print("\n| phase | ms | % of step | model GFLOP | GFLOP/s | % of sgemm |\n|---|---|---|---|---|---|")
    for name, s, f in rows:
        fl = f"{f / 1e9:.1f} | {f / s / 1e9:.1f} | {100 * f / s / 1e9 / sgemm:.0f}%" if f > 0 else "- | - | -"
        print(f"| {name} | {s * 1e3:.1f} | {100 * s / step_s:.1f}% | {fl} |")

    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(impl=f"pytorch {torch.__version__}", preset=a.preset, batch=B, seq=T,
                           threads=torch.get_num_threads(), params=params, ms_per_step=step_s * 1e3,
                           tokens_per_s=tok_s, gflops_causal=gf_causal, gflops_peers=gf_peers, sgemm_gflops=sgemm, sgemm_gflops_before_after=[sgemm_before, sgemm_after],
                           mfu_causal=gf_causal / sgemm, mfu_peers=gf_peers / sgemm, first_loss=first_loss,
                           last_loss=last_loss, peak_rss_gib=rss,
                           phases_ms={k2: v * k * 1e3 for k2, v in sums.items() if k2 != "step"}), f, indent=2)


if __name__ == "__main__":
    main()
