#!/usr/bin/env bash
# cadtrain vs PyTorch training throughput, measured one after the other in the same invocation
# (same machine state): bench/train_bench (C++) then bench/torch_train_bench.py (PyTorch 1.13, the
# same Llama-style model, step and FLOP conventions), then one combined markdown table with the
# ratio of tokens/s.
#
#   bench/run_train_bench.sh                 gpt2-small, B 4 x T 1024, 2 warm-up + 3 timed steps, 2 threads
#   bench/run_train_bench.sh tiny            the tiny_cpu model, B 4 x T 1024
#   bench/run_train_bench.sh gpt2-small --seq 128 --steps 1 --warmup 0     (flags go to both programs)
#   WAIT_POLICIES="default PASSIVE" bench/run_train_bench.sh               (both pairs, see below)
#
# Environment:
#   BUILD_DIR      default build-bench (configured, and train_bench built with -j2, when needed)
#   OUT_DIR        default $BUILD_DIR/train_bench_out/<preset>_<time>: every log and JSON summary
#   PYTHON         default /usr/bin/python3 (Debian's, which has torch 1.13)
#   WAIT_POLICIES  OpenMP wait policies to run the pair under, in turn (default: "default", i.e. the
#                  environment as it is). libgomp threads spin while they wait; on a loaded machine
#                  that steals the cores, and PyTorch additionally runs OpenBLAS's pthread pool
#                  beside its OpenMP pool, so its spinning threads outnumber the cores even on a
#                  quiet one. "PASSIVE" sets OMP_WAIT_POLICY=PASSIVE for both programs alike.
set -euo pipefail

cd "$(dirname "$0")/.."
preset="${1:-gpt2-small}"
case "$preset" in
  tiny|gpt2-small) shift || true ;;
  -*) preset=gpt2-small ;;
  *) echo "usage: $0 [tiny|gpt2-small] [--batch B] [--seq T] [--steps N] [--warmup W] [--threads P]" >&2; exit 2 ;;
esac
# Defaults, overridden by "--flag value" or "--flag=value" arguments; both programs get the result.
declare -A opt=([--batch]=4 [--seq]=1024 [--warmup]=2 [--steps]=3 [--threads]=2)
order=(--batch --seq --warmup --steps --threads)
while (($#)); do
  case "$1" in
    --*=*) flag="${1%%=*}"; value="${1#*=}"; shift ;;
    --*) flag="$1"; value="${2:?$1 needs a value}"; shift 2 ;;
    *) echo "$0: unexpected argument '$1'" >&2; exit 2 ;;
  esac
  [[ -v "opt[$flag]" ]] || order+=("$flag")
  opt[$flag]="$value"
done
args=()
for flag in "${order[@]}"; do args+=("$flag" "${opt[$flag]}"); done

BUILD_DIR="${BUILD_DIR:-build-bench}"
PYTHON="${PYTHON:-/usr/bin/python3}"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/train_bench_out/${preset}_$(date +%Y%m%d_%H%M%S)}"
read -r -a policies <<<"${WAIT_POLICIES:-default}"
mkdir -p "$OUT_DIR"

if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -B "$BUILD_DIR" -G Ninja -DCADTRAIN_CUDA=OFF >/dev/null
fi
ninja -C "$BUILD_DIR" -j2 train_bench >/dev/null

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# train bench: $preset ${args[*]} (OpenMP wait policies: ${policies[*]})"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(load)"
echo "logs: $OUT_DIR"

summaries=()
for policy in "${policies[@]}"; do
  case "$policy" in
    default) run_env=() ;;
    ACTIVE|PASSIVE) run_env=("OMP_WAIT_POLICY=$policy") ;;
    *) echo "$0: WAIT_POLICIES holds '$policy'; expected default, ACTIVE or PASSIVE" >&2; exit 2 ;;
  esac
  for impl in cadtrain torch; do
    tag="${impl}_${policy}"
    l="$(load)"
    echo
    echo "## $impl, OpenMP wait policy $policy (load $l)"
    if [[ "$impl" == cadtrain ]]; then
      cmd=("$BUILD_DIR/bench/train_bench")
    else
      cmd=("$PYTHON" bench/torch_train_bench.py)
    fi
    env "${run_env[@]}" "${cmd[@]}" --preset "$preset" "${args[@]}" --json "$OUT_DIR/$tag.json" 2>&1 |
      tee "$OUT_DIR/$tag.log"
    summaries+=("$OUT_DIR/$tag.json" "$policy" "$l")
  done
done
echo

"$PYTHON" - "${summaries[@]}" <<'EOF'
import json, sys
a = sys.argv[1:]
runs = [(json.load(open(a[i])), a[i + 1], a[i + 2]) for i in range(0, len(a), 3)]
print("## cadtrain vs PyTorch, measured in the same run")
print()
print("| impl | OMP wait | preset | B x T | threads | ms/step | tok/s | GFLOP/s (PEERS conv.) | MFU (PEERS conv.) | "
      "GFLOP/s (causal) | MFU (causal) | own sgemm GFLOP/s | loss first -> last | peak RSS GiB | load at start |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for i in range(0, len(runs), 2):
    pair = runs[i:i + 2]
    for r, policy, load in pair:
        print(f"| {r['impl']} | {policy} | {r['preset']} | {r['batch']} x {r['seq']} | {r['threads']} | "
              f"{r['ms_per_step']:.1f} | {r['tokens_per_s']:.1f} | {r['gflops_peers']:.1f} | {100 * r['mfu_peers']:.1f}% | "
              f"{r['gflops_causal']:.1f} | {100 * r['mfu_causal']:.1f}% | {r['sgemm_gflops']:.1f} | "
              f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} | {r['peak_rss_gib']:.2f} | {load} |")
    (cad, policy, _), (ref, _, _) = pair
    print(f"| **cadtrain / PyTorch** | {policy} | | | | {cad['ms_per_step'] / ref['ms_per_step']:.2f}x | "
          f"**{cad['tokens_per_s'] / ref['tokens_per_s']:.2f}x** | {cad['gflops_peers'] / ref['gflops_peers']:.2f}x | | | | "
          f"{cad['sgemm_gflops'] / ref['sgemm_gflops']:.2f}x | | {cad['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x | |")
if len(runs) > 2:
    best = {impl: max((r for r, _, _ in runs if r["impl"].startswith(impl)), key=lambda r: r["tokens_per_s"])
            for impl in ("cadtrain", "pytorch")}
    print(f"| **best cadtrain / best PyTorch** | | | | | | **{best['cadtrain']['tokens_per_s'] / best['pytorch']['tokens_per_s']:.2f}x** "
          "| | | | | | | | |")
cad, ref = runs[0][0], runs[1][0]
print()
print(f"Parameters: cadtrain {cad['params']}, PyTorch {ref['params']}. FLOPs: PEERS.md convention = 6 x params x "
      "tokens + 12 x layers x T^2 x width per sequence; causal = cadtrain's training_flops (matmul weights, causal "
      "pairs). MFU is against each side's own 2048^3 sgemm (best of before and after its steps; OpenBLAS 0.3.21: the "
      "OpenMP build for cadtrain, the pthread build through torch.mm for PyTorch).")
if cad["params"] != ref["params"]:
    print("WARNING: the two models differ in parameter count")
EOF
