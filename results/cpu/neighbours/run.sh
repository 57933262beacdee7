#!/bin/bash
# What wrote this folder: the shipped configs one, clilr and byot trained briefly on an
# ImageFolder of the CIFAR-10 training split (DATA/train/<class>/*.jpg), then evaluated from
# the checkpoint, exported, and the export evaluated; each method's files copied here, and
# summary.md written from them. Run from a checkout.
set -e
DATA=${DATA:-/tmp/cifar10}
OUT=${OUT:-/tmp/neighbours}
HERE=$(dirname "$0")
common=(--config.dataset=folder --config.data_dir="$DATA" "--config.train_split=train[:450]"
        "--config.eval_split=train[-100:]" --config.num_train_steps=60 --config.batch_size=128
        --config.log_every_steps=20 --config.eval_every_steps=60 --config.checkpoint_every_steps=60)
evaluation=eval_train_-100.json  # What eval.py writes for that split.
for m in one clilr byot; do
  rm -rf "${OUT:?}/$m" && mkdir -p "$HERE/$m"
  python train.py --config=$m --workdir="$OUT/$m" "${common[@]}"
  python eval.py --config=$m --workdir="$OUT/$m" "${common[@]}" \
    | tee "$HERE/$m/eval_checkpoint.txt"
  python export.py --config=$m --workdir="$OUT/$m" --export_dir="$OUT/$m/export" "${common[@]}"
  python eval.py --config=$m --export_dir="$OUT/$m/export" "${common[@]}" \
    | tee "$HERE/$m/eval_export.txt"
  cp "$OUT/$m/$evaluation" "$HERE/$m/eval_checkpoint.json"
  cp "$OUT/$m/export/$evaluation" "$HERE/$m/eval_export.json"
  cp "$OUT/$m/export/model.json" "$HERE/$m/export_model.json"
  cp "$OUT/$m/metrics.jsonl" "$HERE/$m/metrics.jsonl"
done
python "$HERE/summary.py"
