#!/usr/bin/env bash
# The evidence campaign (configs/campaign.py; results/campaign/README.md): the one command to
# run whenever a GPU is available, on the accelerator image with what travels with the
# checkout (.device_wheels/, .device_data/: bash benchmarks/device_prepare.sh fills them).
#
#   bash experiments/campaign.sh [--quick] [--budget_s S] [--out_dir DIR] [--dry_run]
#
# 1. Unpacks the data (not with --dry_run).
# 2. Until DIR/throughput/<slug>.jsonl holds every cell of the sweep for this device kind,
#    measures batched runs (benchmarks.batched_runs) in at most THROUGHPUT_SHARE of the budget.
# 3. Trains the next unfinished computations of the campaign in what is left of the budget
#    (python -m sila_jax.experiments.campaign; SIGTERM a little after it, should an estimate be short).
# 4. With $OUT set (the device tool's folder that comes back), packs DIR, work folders left
#    out, into $OUT/campaign.tar.gz (paths from the checkout's root: `tar -xzf campaign.tar.gz`
#    there restores it; only this call's files if the whole is over 15 MiB) and copies this
#    console log to $OUT/log.txt.
# --budget_s S (default 420) is the seconds for stages 2 and 3, compilation included; with
# start-up it fits one 8-minute command. DIR defaults to results/campaign. --quick runs the
# tiny campaign of configs/campaign_quick.py on generated data (CPU, a minute or two; the test
# suite runs it), in a new temporary folder unless --out_dir is given. --dry_run trains
# nothing and lists what is left with its estimated GPU minutes (on a CPU, for the GPU of the
# newest throughput records). SIGTERM or Ctrl-C stops the stage running, which keeps what
# it finished; the results are packed all the same.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/device_env.sh  # Parses the arguments, sets up the machine.
budget_s=${budget_s:-420}  # sila_jax.experiments.campaign.DEFAULT_BUDGET_S
THROUGHPUT_SHARE=0.35
GRACE_S=45  # After the campaign's own deadline: saving, summaries, tables.
if [[ $quick == 1 ]]; then
  campaign=configs/campaign_quick.py
  out_dir=${out_dir:-$(mktemp -d "${TMPDIR:-/tmp}/campaign-quick.XXXXXX")}
  throughput_args=(--quick)
  sweep_cells=4  # batched_runs --quick: R = 1, 2 for plain and sila, one form.
else
  campaign=configs/campaign.py
  out_dir=${out_dir:-results/campaign}
  throughput_args=(--num_runs 1,4,8,16,32 --methods plain,sila --peer_convs sliced,grouped
                   --batch_size 128 --dtype bfloat16)
  sweep_cells=20  # 5 run counts x 2 methods x 2 forms.
fi
exec > >(tee "$work/log.txt") 2>&1
echo "== campaign $campaign in $out_dir on $device ($(date -u +%FT%TZ)), commit $commit," \
     "budget $budget_s s, quick=$quick, dry_run=$dry_run"
budget_start=$(date +%s.%N)
touch "$work/started"

# Each stage runs in the background, so that a SIGTERM or Ctrl-C sent to this script reaches
# it at once (bash runs a trap only after the foreground command ends).
child=0
stopping=0
forward_stop() {
  stopping=1
  if [[ $child != 0 ]]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap forward_stop TERM INT
in_background() {
  "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do  # The trap interrupted the wait: wait again.
    rc=0
    wait "$child" || rc=$?
  done
  child=0
  return "$rc"
}
left_s() { python3 -c 'import sys, time
print(max(int(float(sys.argv[1]) - (time.time() - float(sys.argv[2]))), 0))' "$budget_s" "$budget_start"; }

data_args=()
if [[ $dry_run == 0 ]]; then
  stage 'data'
  unpack_data
  data_args=(--data_dir "$data")
fi

throughput_file="$out_dir/throughput/$slug.jsonl"
# Measured once every cell of the sweep has a row for this device kind (a cut-off sweep
# continues on the next call; batched_runs skips the cells it has).
measured=$(python3 -c 'import json, os, sys
path, kind, cells = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
print(int(sum(r.get("device_kind") == kind for r in rows) >= int(cells)))' \
    "$throughput_file" "$device" "$sweep_cells")
if [[ $dry_run == 0 && $measured == 0 && $stopping == 0 ]]; then
  share=$(python3 -c "print(int($budget_s * $THROUGHPUT_SHARE))")
  stage "throughput of batched runs on $device (at most $share s)"
  mkdir -p "$(dirname "$throughput_file")"
  in_background timeout -s TERM -k 10 $((share + 15)) python3 -m benchmarks.batched_runs \
      "${throughput_args[@]}" --budget_s "$share" --out "$throughput_file" \
    || echo "the throughput stage stopped (exit $?); estimates use what it wrote, else the committed figures"
fi

status=0
if [[ $stopping == 0 ]]; then
  left=$(left_s)
  stage "campaign ($left s left)"
  kind_args=()
  if [[ $quick == 1 ]]; then kind_args=(--device_kind "$device"); fi
  dry_args=()
  if [[ $dry_run == 1 ]]; then dry_args=(--dry_run) left=$budget_s; fi  # Calls of the whole.
  in_background timeout -s TERM -k 20 $((left + GRACE_S)) python3 -m sila_jax.experiments.campaign \
      --out_dir "$out_dir" --campaign "$campaign" --budget_s "$left" \
      "${data_args[@]}" "${kind_args[@]}" "${dry_args[@]}" || status=$?
  if [[ $status == 124 ]]; then
    echo "the campaign overran its budget and was stopped by SIGTERM; its finished runs are kept"
    status=0
  fi
fi

if [[ -n ${OUT:-} && $dry_run == 0 && -d $out_dir ]]; then
  stage "packing $out_dir into $OUT/campaign.tar.gz"
  relative=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1]))' "$out_dir")
  base=. name=$relative
  if [[ $relative == ..* ]]; then base=$(dirname "$out_dir") name=$(basename "$out_dir"); fi
  tar -czf "$OUT/campaign.tar.gz" --exclude='*/work' -C "$base" "$name"
  if (( $(stat -c %s "$OUT/campaign.tar.gz") > 15 * 1024 * 1024 )); then
    echo "over 15 MiB: packing only the files this call wrote"
    (cd "$base" && find "$name" -type f -newer "$work/started" -not -path '*/work/*') \
        > "$work/new_files"
    tar -czf "$OUT/campaign.tar.gz" -C "$base" -T "$work/new_files"
  fi
  ls -l "$OUT/campaign.tar.gz"
fi
if [[ $dry_run == 1 ]]; then
  stage "done (exit $status); a dry run writes nothing"
else
  stage "done (exit $status); results in $out_dir, log in $out_dir/log.md"
fi
if [[ -n ${OUT:-} ]]; then cp "$work/log.txt" "$OUT/log.txt"; fi
exit "$status"
