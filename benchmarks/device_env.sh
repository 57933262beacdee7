# Sourced by the device scripts (benchmarks/device_check.sh, experiments/device_grid.sh) after
# `cd` to the checkout. Parses their arguments, --quick (sets $quick to 1) and --out_dir DIR
# ($out_dir), and makes $work, a scratch folder removed at exit, and stage(), which prints a
# heading with the seconds since the start.
#
# The accelerator image has jax with CUDA but no TensorFlow, TFDS, ml_collections or
# tensorboardX, and no network; what it lacks travels with the checkout in ignored folders:
#   .device_wheels/   pip download ml_collections tensorboardX --no-deps -d .device_wheels
#   .device_data/     cp ../shared/data/cifar10-train-jpeg.tar.gz .device_data/
# Also sets PYTHONPATH, $device (the accelerator's name), $slug (its name for folders) and
# $data (the CIFAR-10 ImageFolder root; with quick=1 a generated tree of the same layout).
quick=0
out_dir=''
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --out_dir) out_dir="$2"; shift ;;
    *) echo "$(basename "$0"): unknown argument '$1' (use --quick, --out_dir DIR)" >&2; exit 2 ;;
  esac
  shift
done
start=$(date +%s)
stage() { echo "== [$(( $(date +%s) - start )) s] $*"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Wheels the image lacks, installed beside it (nothing on the image is replaced).
if ! python3 -c 'import ml_collections, tensorboardX' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target "$work/site" .device_wheels/*.whl
  export PYTHONPATH="$PYTHONPATH:$work/site"
fi
device=$(python3 -c 'import jax; print(jax.devices()[0].device_kind)')
slug=$(echo "$device" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')

seconds_since() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$1"; }

# The data: the carried JPEGs, or (quick) 24 random JPEGs per class.
unpack_data() {
  data="$work/cifar10"
  mkdir -p "$data"
  if [[ $quick == 1 ]]; then
    python3 -c "from benchmarks import throughput; throughput.random_folder('$data', 24)"
  else
    local t0
    t0=$(date +%s.%N)
    tar -xzf .device_data/cifar10-train-jpeg.tar.gz -C "$data"
    echo "unpacked $(find "$data" -name '*.jpg' | wc -l) JPEGs in $(seconds_since "$t0") s"
  fi
}
