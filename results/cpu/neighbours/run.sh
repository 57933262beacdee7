#!/bin/bash
# What wrote this folder: the shipped configs one, clilr and byot trained briefly on an
# ImageFolder of the CIFAR-10 training split (DATA/train/<class>/*.jpg), then evaluated from
# the checkpoint, exported, and the export evaluated. Run from a checkout.
set -e
DATA=${DATA:-/tmp/cifar10}
OUT=${OUT:-/tmp/neighbours}
common=(--config.dataset=folder --config.data_dir="$DATA" "--config.train_split=train[:450]"
        "--config.eval_split=train[-100:]" --config.num_train_steps=60 --config.batch_size=128
        --config.log_every_steps=20 --config.eval_every_steps=60 --config.checkpoint_every_steps=60)
for m in one clilr byot; do
  python train.py --config=$m --workdir="$OUT/$m" "${common[@]}"
  python eval.py --config=$m --workdir="$OUT/$m" "${common[@]}"
  python export.py --config=$m --workdir="$OUT/$m" --export_dir="$OUT/$m/export" "${common[@]}"
  python eval.py --config=$m --export_dir="$OUT/$m/export" "${common[@]}"
done
