#!/usr/bin/env bash
# cadtrain vs PyTorch training throughput, measured one after the other in the same invocation
# (same machine state): bench/train_bench (C++) then bench/torch_train_bench.py (PyTorch 1.13, the
# same Llama-style model, step and FLOP conventions), then one combined markdown table with the
# ratio of tokens/s.
#
#   bench/run_train_bench.sh                 gpt2-small, B 4 x T 1024, 2 warm-up + 3 timed steps, 2 threads
#   bench/run_train_bench.sh tiny            the tiny_cpu model, B 4 x T 1024
#   bench/run_train_bench.sh gpt2-small --seq 128 --steps 1 --warmup 0     (extra flags go to both)
#
# Environment: BUILD_DIR (default build-bench; configured and built with -j2 when needed),
# OUT_DIR (default $BUILD_DIR/train_bench_out/<preset>_<time>: both logs and JSON summaries), PYTHON
# (default /usr/bin/python3, Debian's, which has torch 1.13), TORCH_ENV (VAR=value words set for
# the PyTorch run only, e.g. TORCH_ENV="OMP_WAIT_POLICY=PASSIVE": torch's OpenMP pool and OpenBLAS's
# pthread pool both spin-wait, which costs it time on a loaded machine).
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
mkdir -p "$OUT_DIR"

if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -B "$BUILD_DIR" -G Ninja -DCADTRAIN_CUDA=OFF >/dev/null
fi
ninja -C "$BUILD_DIR" -j2 train_bench >/dev/null

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "# train bench: $preset ${args[*]}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(load)"
echo "logs: $OUT_DIR"
echo

load_cad="$(load)"
echo "## cadtrain (load $load_cad)"
"$BUILD_DIR/bench/train_bench" --preset "$preset" "${args[@]}" --json "$OUT_DIR/cadtrain.json" \
  2>&1 | tee "$OUT_DIR/cadtrain.log"
echo
load_torch="$(load)"
echo "## PyTorch (load $load_torch${TORCH_ENV:+, env $TORCH_ENV})"
# shellcheck disable=SC2086  # TORCH_ENV is a list of words
env ${TORCH_ENV:-} "$PYTHON" bench/torch_train_bench.py --preset "$preset" "${args[@]}" --json "$OUT_DIR/torch.json" \
  2>&1 | tee "$OUT_DIR/torch.log"
echo

"$PYTHON" - "$OUT_DIR/cadtrain.json" "$OUT_DIR/torch.json" "$load_cad" "$load_torch" <<'EOF'
import json, sys
cad, ref = (json.load(open(p)) for p in sys.argv[1:3])
loads = sys.argv[3:5]
print("## cadtrain vs PyTorch, measured in the same run")
print()
print("| impl | preset | B x T | threads | ms/step | tok/s | GFLOP/s (PEERS conv.) | MFU (PEERS conv.) | "
      "GFLOP/s (causal) | MFU (causal) | own sgemm GFLOP/s | loss first -> last | peak RSS GiB | load at start |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r, load in zip((cad, ref), loads):
    print(f"| {r['impl']} | {r['preset']} | {r['batch']} x {r['seq']} | {r['threads']} | {r['ms_per_step']:.1f} | "
          f"{r['tokens_per_s']:.1f} | {r['gflops_peers']:.1f} | {100 * r['mfu_peers']:.1f}% | {r['gflops_causal']:.1f} | "
          f"{100 * r['mfu_causal']:.1f}% | {r['sgemm_gflops']:.1f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
          f"{r['peak_rss_gib']:.2f} | {load} |")
ratio = cad["tokens_per_s"] / ref["tokens_per_s"]
print(f"| **cadtrain / PyTorch** | | | | {cad['ms_per_step'] / ref['ms_per_step']:.2f}x | **{ratio:.2f}x** | "
      f"{cad['gflops_peers'] / ref['gflops_peers']:.2f}x | | | | {cad['sgemm_gflops'] / ref['sgemm_gflops']:.2f}x | | "
      f"{cad['peak_rss_gib'] / ref['peak_rss_gib']:.2f}x | |")
print()
print("Parameters: cadtrain %d, PyTorch %d. FLOPs: PEERS.md convention = 6 x params x tokens + 12 x layers x T^2 x "
      "width per sequence; causal = cadtrain's training_flops (matmul weights, causal pairs). MFU is against each "
      "side's own 2048^3 sgemm measured in its run (OpenBLAS 0.3.21: the OpenMP build for cadtrain, the pthread "
      "build through torch.mm for PyTorch)." % (cad["params"], ref["params"]))
if cad["params"] != ref["params"]:
    print("WARNING: the two models differ in parameter count")
EOF
