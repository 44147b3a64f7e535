# Sourced by launch/mpirun.sh and launch/slurm.sbatch: checks CONFIG (and --set overrides in
# SETS) against the number of ranks with `cadtrain config check`, and sets RUN_DIR to the run's
# directory (output_dir/name) and TRAIN_ARGS to the `train` arguments: a fresh start, or
# `--resume RUN_DIR` when the run already has checkpoints (a requeued or restarted job continues).
# Needs: CADTRAIN (the binary), CONFIG, SETS (array), RANKS.
check_and_resume_args() {
  local set_args=() s effective name output_dir
  for s in "${SETS[@]}"; do set_args+=(--set "$s"); done
  effective=$("$CADTRAIN" config check --config "$CONFIG" "${set_args[@]}" --world-size "$RANKS") || {
    echo "$CONFIG does not run on $RANKS ranks (see above)" >&2; return 1; }
  name=$(sed -n 's/^name: "\(.*\)"$/\1/p' <<<"$effective" | head -1)
  output_dir=$(sed -n 's/^output_dir: "\(.*\)"$/\1/p' <<<"$effective" | head -1)
  RUN_DIR="$output_dir/$name"
  if compgen -G "$RUN_DIR/checkpoints/step_*.h5" >/dev/null; then
    TRAIN_ARGS=(--resume "$RUN_DIR" --fallback "${set_args[@]}")
    echo "launch: $RUN_DIR has checkpoints; resuming from the newest valid one"
  else
    TRAIN_ARGS=(--config "$CONFIG" "${set_args[@]}")
  fi
}
