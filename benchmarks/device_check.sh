#!/usr/bin/env bash
# One-command device check, sized for about 6 minutes on one H100 or H200:
#
#   bash benchmarks/device_check.sh [--quick] [--out_dir DIR]
#
# Runs on the accelerator image with only what travels with the checkout (ignored folders
# .device_wheels/ and .device_data/, which `bash benchmarks/device_prepare.sh` fills; without
# them it stops in one line saying so). It records the machine, prints the throughput table
# (benchmarks.throughput, the cells that fit in 150 s), trains plain and SiLa ResNet-20 with
# configs/cifar10_fast.py (validation accuracy and wall time), times the alternative kernel
# forms (benchmarks.kernels), then trains ResNet-18 if time is left. Everything goes to DIR: by
# default $OUT when set (the device tool's folder that comes back), else
# results/device/<date>-<device>/.
# --quick runs every stage on CPU in about a minute, on generated data (the test suite does),
# into a new folder outside the checkout unless DIR is given: the checkout stays as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
device_options='--quick --out_dir'
source benchmarks/device_env.sh  # Parses them, checks what was carried, sets up the machine.
out_dir=${out_dir:-$(default_out_dir)}
mkdir -p "$out_dir"
log="$out_dir/log.txt"
exec > >(tee "$log") 2>&1
echo "== device check on $device ($(date -u +%FT%TZ)), commit $commit, quick=$quick, into $out_dir"

# 1. The machine.
stage 'machine'
{
  python3 -c 'import sys, jax, jaxlib, flax, optax; print("python", sys.version.split()[0]);
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__);
print("devices", jax.devices())'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  nproc
} | tee "$out_dir/env.txt"

# 2. The data: the carried JPEGs, or (quick) a generated tree in the same layout.
stage 'data'
unpack_data
if [[ $quick == 1 ]]; then
  split_args=(--config.train_split='train[:-4]' --config.eval_split='train[-4:]')
else
  split_args=()
fi
python3 -c "
import time, numpy as np
from sila_jax.data import folder_data
t = time.perf_counter()
source = folder_data.FolderSource('$data', 'train', 32)
source.read(np.arange(source.num_examples))
print(f'decoded {source.num_examples} JPEGs in {time.perf_counter() - t:.1f} s')"

# 3. Throughput of the whole training loop.
stage 'throughput'
if [[ $quick == 1 ]]; then
  throughput_args=(--quick --methods sila --inputs host --dtypes bfloat16)  # Training runs on the device path.
else
  throughput_args=(--data_dir "$data" --budget_s 150)
fi
python3 -m benchmarks.throughput "${throughput_args[@]}" --out "$out_dir/throughput.jsonl"

# 4. Training with the fast recipe: plain and SiLa ResNet-20.
train_run() {  # name, then overrides
  local name=$1; shift
  local t0 workdir=$work/$name
  t0=$(date +%s.%N)
  python3 train.py --config=configs/cifar10_fast.py --workdir="$workdir" \
      --config.data_dir="$data" "${split_args[@]}" "$@" 2>"$work/$name.log" \
      || { tail -20 "$work/$name.log"; return 1; }
  local wall
  wall=$(seconds_since "$t0")
  python3 eval.py --config=configs/cifar10_fast.py --workdir="$workdir" \
      --config.data_dir="$data" "${split_args[@]}" "$@" 2>>"$work/$name.log" >/dev/null
  python3 - "$name" "$workdir" "$wall" "$device" "$@" <<'PY' | tee -a "$out_dir/training.jsonl"
import glob, json, sys
from sila_jax.training import metrics
name, workdir, wall, device, *overrides = sys.argv[1:]
evaluation = json.load(open(glob.glob(f'{workdir}/eval_*.json')[0]))
train = metrics.read(workdir, metrics.TRAIN)
validations = metrics.read(workdir, metrics.VALIDATION)
print(json.dumps({'run': name, 'device': device, 'config': 'configs/cifar10_fast.py',
                  'overrides': overrides, 'val_accuracy': evaluation['accuracy'],
                  'val_loss': evaluation['loss'], 'num_examples': evaluation['num_examples'],
                  'steps': evaluation['step'], 'wall_s': round(float(wall), 1),
                  'images_per_sec': train[-1]['images_per_sec'],
                  'best_val_accuracy': max(r['accuracy'] for r in validations)}))
PY
}
stage 'training ResNet-20, plain and SiLa'
if [[ $quick == 1 ]]; then
  quick_args=(--config.num_train_steps=2 --config.width=0.25 --config.batch_size=16
              --config.eval_batch_size=8)
  train_run resnet20_sila "${quick_args[@]}"  # The plain run is the same code, SiLa off.
else
  train_run resnet20_plain --config.sila.enabled=False
  train_run resnet20_sila
fi

# 5. Kernel forms (benchmarks.kernels), at the throughput table's batch size.
stage 'kernel forms'
if [[ $quick == 1 ]]; then kernel_args=(--quick); else kernel_args=(--batch_size 512); fi
python3 -m benchmarks.kernels "${kernel_args[@]}" --out "$out_dir/kernels.jsonl"

# 6. ResNet-18 with the fast recipe, if time is left.
if [[ $quick == 0 ]]; then
  stage 'training ResNet-18'
  if (( $(date +%s) - start < 330 )); then
    train_run resnet18_plain --config.model=resnet18 --config.sila.enabled=False \
        --config.num_epochs=15 --config.optimizer.learning_rate=0.2
  else
    echo "skipped resnet18_plain: $(( $(date +%s) - start )) s spent"
  fi
fi
python3 -m benchmarks.device_report "$out_dir" >/dev/null
echo "== device check done in $(( $(date +%s) - start )) s; results in $out_dir (summary.md)"
