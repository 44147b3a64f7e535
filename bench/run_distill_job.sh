#!/usr/bin/env bash
# The distillation job at small scale: a teacher (the tiny default shape) trained on the synthetic
# corpus, its top-K store, then two identical smaller students for the same steps, one with
# CE + lambda * KD and one with CE alone. Prints each run's final eval line.
# Usage: bench/run_distill_job.sh [TEACHER_STEPS] [STUDENT_STEPS] [TOKENS_PER_MICRO_BATCH] [DOCS]
# (run from the repository root)
set -euo pipefail
teacher_steps=${1:-300}
student_steps=${2:-300}
tokens=${3:-4096}
docs=${4:-2000}
out=runs/distill_job
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
common=(--set output_dir=$out --set schedule.eval_every=0 --set logging.log_every=5 --set schedule.warmup_steps=5
        --set data.tokens_per_micro_batch=$tokens --set data.synth.n_docs=$docs
        --set data.train_path=$out/data/train.h5 --set data.eval_path=$out/data/eval.h5)
student=(--set model.d_model=128 --set model.n_layers=2 --set schedule.total_steps=$student_steps)
rm -rf "$out"
build/cadtrain train "${common[@]}" --set name=teacher --set schedule.total_steps=$teacher_steps
build/cadtrain distill prepare --teacher $out/teacher --data $out/data/train.h5 --k 32 \
    --out $out/teacher_top32.h5
build/cadtrain train "${common[@]}" "${student[@]}" --set name=student_kd \
    --set loss.distill.teacher_path=$out/teacher_top32.h5 --set loss.distill.weight=0.5 \
    --set loss.distill.temperature=2
build/cadtrain train "${common[@]}" "${student[@]}" --set name=student_ce
for run in teacher student_kd student_ce; do
  echo "$run: $(grep '"eval"' $out/$run/metrics.jsonl | tail -1)"
done
