#!/usr/bin/env bash
# The evidence grids (configs/grids/ablation.py, compression.py, compare.py) at a GPU budget,
# sized for under 8 minutes on one H100 (the same image and carried folders as
# benchmarks/device_check.sh; benchmarks/device_env.sh says how to fill them):
#
#   bash experiments/device_grid.sh [--quick] [--out_dir DIR]
#
# Each grid goes through the experiment runner (python -m sila_jax.experiments) with the GPU
# recipe below as --config overrides: ResNet-20 (DY-ResNet-20 in `compare`), batch 512,
# bfloat16, EPOCHS epochs, lr 0.4 with one epoch of warm-up, validation every epoch on the
# class-balanced 5k slice. Runs that differ only in numeric loss settings train as one
# computation (up to 18 runs), so a grid costs a few compilations. Grids run in order of
# importance, each under its own time limit, so one that overruns keeps the others' results.
# Everything goes to DIR: by default $OUT when set, else results/device/<date>-<device>-grids/.
# First it times 8 runs batched against one (benchmarks.batched_runs, 60 s at most).
# --quick (CPU, about a minute and a half; the test suite runs it) times the batched runs at
# CPU size, lists every grid's runs at the GPU recipe (--dry_run: each run's config is
# checked) and trains the smoke grid on generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh  # Parses --quick and --out_dir, sets up the machine.
out_dir=${out_dir:-${OUT:-results/device/$(date +%Y-%m-%d)-$slug-grids}}
mkdir -p "$out_dir"
exec > >(tee "$out_dir/log.txt") 2>&1
echo "== evidence grids on $device ($(date -u +%FT%TZ)), quick=$quick"
python3 -c 'import sys, jax; print("python", sys.version.split()[0], "jax", jax.__version__,
"devices", jax.devices())' | tee "$out_dir/env.txt"

stage 'data'
unpack_data

stage 'batched runs against separate runs'
if [[ $quick == 1 ]]; then
  batched_args=(--quick) batched_limit=600
else
  batched_args=(--num_runs 8 --batch_size 512 --dtype bfloat16 --steps 20 --peer_conv grouped)
  batched_limit=60
fi
timeout $batched_limit python3 -m benchmarks.batched_runs "${batched_args[@]}" \
    --out "$out_dir/batched_runs.jsonl" | tee "$out_dir/batched_runs.txt" || true

EPOCHS=8
recipe=(--config.data_dir="$data" --config.num_train_steps=-1 --config.num_epochs=$EPOCHS
        --config.batch_size=512 --config.eval_batch_size=1000 --config.dtype=bfloat16
        --config.optimizer.learning_rate=0.4 --config.optimizer.warmup_epochs=1.0
        --config.eval_every_steps=-1 --config.log_every_steps=20
        --config.checkpoint_every_steps=200 --config.kernels.peer_conv=grouped)
grid() {  # name, time limit in seconds
  stage "grid $1 (limit $2 s)"
  local args=(--grid="configs/grids/$1.py" --out="$out_dir/$1" --max_runs=18 "${recipe[@]}")
  if [[ $quick == 1 ]]; then args+=(--dry_run); fi
  timeout "$2" python3 -m sila_jax.experiments "${args[@]}" 2>"$work/$1.log" \
      || { echo "grid $1 stopped (exit $?): its finished runs are in $out_dir/$1/runs"; tail -5 "$work/$1.log"; }
}
grid ablation 210
grid compression 60
grid compare 140
if [[ $quick == 1 ]]; then
  stage 'smoke grid (trains)'
  python3 -m sila_jax.experiments --grid=configs/grids/smoke.py --out="$out_dir/smoke" \
      --config.data_dir="$data" --config.train_split='train[:-4]' \
      --config.eval_split='train[-4:]' --config.num_train_steps=4 --config.eval_every_steps=2 \
      2>"$work/smoke.log" || { tail -20 "$work/smoke.log"; exit 1; }
fi
find "$out_dir" -name work -type d -prune -exec rm -rf {} +  # Checkpoints stay behind.
echo "== grids done in $(( $(date +%s) - start )) s; results in $out_dir/<grid>/summary.md"
