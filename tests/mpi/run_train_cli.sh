#!/usr/bin/env bash
# `cadtrain train` under mpirun end to end: a 2-rank data-parallel run prints one table, one
# result line and one metrics file (the writer's); a layout that does not fit the launch fails on
# every rank, naming the field, without hanging; the 2-rank checkpoint resumes in one process.
# Usage: run_train_cli.sh MPIEXEC CADTRAIN
set -uo pipefail
mpiexec=$1 cadtrain=$2
fail() { echo "FAILED: $*"; exit 1; }
dir=$(mktemp -d /tmp/cadtrain_train_cli.XXXXXX)
trap 'rm -rf "$dir"' EXIT
sets=(--set "output_dir=$dir" --set name=cli --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2
      --set model.max_seq_len=256 --set "data.train_path=$dir/train.h5" --set "data.eval_path=$dir/eval.h5"
      --set data.tokens_per_micro_batch=128 --set data.grad_accumulation=1
      --set "data.synth={ n_docs: 60 mean_doc_tokens: 48 min_doc_tokens: 16 max_doc_tokens: 256 }"
      --set schedule.total_steps=3 --set schedule.warmup_steps=1 --set schedule.eval_every=0
      --set checkpoint.every_steps=0 --set parallel.threads=1)

out=$(timeout 100 "$mpiexec" --oversubscribe -np 2 "$cadtrain" train "${sets[@]}" --set parallel.data_parallel=2 2>&1)
rc=$?
echo "$out"
[[ $rc -eq 0 ]] || fail "the 2-rank run exited $rc"
[[ $(grep -c "^done: 3 steps" <<<"$out") -eq 1 ]] || fail "expected one result line (the writer's)"
[[ $(grep -c "^| parameter  " <<<"$out") -eq 1 ]] || fail "expected one start-up table (the writer's)"
grep -q "^| ranks *| 2 (data-parallel 2 x context-parallel 1" <<<"$out" || fail "the table does not show the 2 ranks"
[[ $(grep -vc '"eval"' "$dir/cli/metrics.jsonl") -eq 3 ]] || fail "metrics.jsonl does not hold 3 steps"

out=$(timeout 60 "$mpiexec" --oversubscribe -np 2 "$cadtrain" train "${sets[@]}" --set name=bad \
      --set parallel.data_parallel=3 2>&1)
rc=$?
echo "$out"
[[ $rc -ne 0 && $rc -ne 124 ]] || fail "a layout of 3 ranks on 2 exited $rc (expected an error, not success or a hang)"
grep -q "parallel.data_parallel (3)" <<<"$out" || fail "the error does not name parallel.data_parallel"
[[ ! -e $dir/bad ]] || fail "the failed layout created its run directory"

out=$(timeout 60 "$cadtrain" train --resume "$dir/cli" --set parallel.data_parallel=1 --set data.grad_accumulation=2 \
      --set schedule.total_steps=4 2>&1)
rc=$?
echo "$out"
[[ $rc -eq 0 ]] || fail "resuming the 2-rank run in one process exited $rc"
grep -q "resumed from .*step_00000003.h5 at step 3" <<<"$out" || fail "the resume did not start from step 3"
grep -q "^done: 4 steps" <<<"$out" || fail "the resumed run did not finish step 4"
echo "PASSED"
