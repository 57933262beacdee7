# Sourced by the device scripts (benchmarks/device_check.sh, experiments/campaign.sh) after `cd`
# to the checkout. Parses their arguments (those in $device_options, if the script sets it):
#   --quick        $quick=1: every stage at CPU size, on generated data (the test suite)
#   --out_dir DIR  $out_dir (default empty: the script calls default_out_dir)
#   --budget_s S   $budget_s, seconds the campaign may spend (default empty: its own)
#   --dry_run      $dry_run=1: the campaign checks and lists its runs, training none
# and makes $work, a scratch folder removed at exit, and stage(), which prints a heading with
# the seconds since $start (seconds_since T gives them since any `date +%s.%N` T).
#
# The accelerator image has jax with CUDA but no TensorFlow, TFDS, ml_collections,
# tensorboardX or tqdm, and no network; what it lacks travels with the checkout in two ignored
# folders, which `bash benchmarks/device_prepare.sh` fills on this side and names in the call:
#   .device_wheels/   wheels of $carried_modules, installed beside the image's packages
#   .device_data/     cifar10-train-jpeg.tar.gz, and COMMIT (the checkout's commit)
# A script stops in one line, before any work, when one it needs was not carried (the data
# is not needed with --quick or --dry_run). SILA_DEVICE_WHEELS and SILA_DEVICE_DATA point at
# other folders than these (the tests use empty ones).
# Also sets PYTHONPATH, $device (the accelerator's name), $slug (its name for folders),
# $commit (git's, with -dirty; without git, .device_data/COMMIT's; else 'unknown') and,
# through unpack_data, $data (the CIFAR-10 ImageFolder root; with --quick, or --dry_run
# without the tarball, a generated tree of the same layout). default_out_dir SUFFIX gives a
# script's results folder.
# A script taking fewer sets $device_options to the ones it takes before sourcing this.
device_options=${device_options:---quick --out_dir --budget_s --dry_run}
quick=0
dry_run=0
out_dir=''
budget_s=''
while [[ $# -gt 0 ]]; do
  if [[ " $device_options " != *" $1 "* ]]; then
    echo "$(basename "$0"): unknown argument '$1' (it takes $device_options)" >&2; exit 2
  fi
  case "$1" in
    --quick) quick=1 ;;
    --dry_run) dry_run=1 ;;
    --out_dir|--budget_s)
      [[ $# -ge 2 ]] || { echo "$(basename "$0"): $1 needs a value" >&2; exit 2; }
      if [[ $1 == --out_dir ]]; then out_dir="$2"; else budget_s="$2"; fi
      shift ;;
  esac
  shift
done
if [[ -n $budget_s && ! $budget_s =~ ^[0-9]+([.][0-9]*)?$ ]]; then
  echo "$(basename "$0"): --budget_s '$budget_s' is not a number of seconds" >&2; exit 2
fi

# What must have been carried; benchmarks/device_prepare.sh downloads the same list.
carried_modules=(ml_collections tensorboardX tqdm)
device_wheels=${SILA_DEVICE_WHEELS:-.device_wheels}
device_data=${SILA_DEVICE_DATA:-.device_data}
tarball=$device_data/cifar10-train-jpeg.tar.gz
not_carried() {  # what is missing, the carry entry that brings it
  echo "$(basename "$0"): $1: the carry entry \"$2\" is missing (fill it with" \
       "\`bash benchmarks/device_prepare.sh\`, then pass" \
       "carry [\".device_wheels\", \".device_data\"])" >&2
  exit 3
}
lacking=$(python3 -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' \
          "${carried_modules[@]}")
if [[ -n $lacking ]] && ! compgen -G "$device_wheels/*.whl" >/dev/null; then
  not_carried "the image lacks $lacking and $device_wheels/ holds no wheels" .device_wheels
fi
if [[ $quick == 0 && $dry_run == 0 && ! -f $tarball ]]; then
  not_carried "no $tarball" .device_data
fi

start=$(date +%s)
stage() { echo "== [$(( $(date +%s) - start )) s] $*"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Wheels the image lacks, installed beside it (nothing on the image is replaced).
if [[ -n $lacking ]]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-index --no-deps --target "$work/site" \
      "$device_wheels"/*.whl
  export PYTHONPATH="$PYTHONPATH:$work/site"
  still=$(python3 -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' $lacking)
  [[ -z $still ]] || not_carried "the image lacks $still and $device_wheels/ holds no wheel of it" \
                                 .device_wheels
fi
device=$(python3 -c 'import jax; print(jax.devices()[0].device_kind)')
slug=$(echo "$device" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')
if commit=$(git rev-parse HEAD 2>/dev/null); then  # The device has no .git: COMMIT says.
  git diff --quiet HEAD -- || commit+=-dirty
elif [[ -f $device_data/COMMIT ]]; then
  commit=$(cat "$device_data/COMMIT")
else
  commit=unknown
fi

seconds_since() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$1"; }

# A script's results folder: $OUT when set (the device tool's folder that comes back); with
# --quick a new folder outside the checkout, so that a check leaves the checkout as it was;
# else results/device/<date>-<slug>SUFFIX. Prints the path.
default_out_dir() {
  if [[ -n ${OUT:-} ]]; then
    echo "$OUT"
  elif [[ $quick == 1 ]]; then
    mktemp -d "${TMPDIR:-/tmp}/$(basename "$0" .sh)-quick.XXXXXX"
  else
    echo "results/device/$(date +%Y-%m-%d)-$slug${1:-}"
  fi
}

# The data: the carried JPEGs, or (quick, or a dry run without them) 24 random JPEGs per class.
unpack_data() {
  data="$work/cifar10"
  mkdir -p "$data"
  if [[ $quick == 1 || ( $dry_run == 1 && ! -f $tarball ) ]]; then
    python3 -c "from benchmarks import throughput; throughput.random_folder('$data', 24)"
  else
    local t0
    t0=$(date +%s.%N)
    tar -xzf "$tarball" -C "$data"
    echo "unpacked $(find "$data" -name '*.jpg' | wc -l) JPEGs in $(seconds_since "$t0") s"
  fi
}
