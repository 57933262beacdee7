#!/usr/bin/env bash
# Fills, on this machine, the two ignored folders the device scripts need carried to the
# accelerator machine, and prints the device call to make:
#
#   bash benchmarks/device_prepare.sh [TARBALL]
#
#   .device_wheels/  wheels of what the accelerator image lacks and sila_jax imports at run time
#                    ($packages below; pure-python, or built for CPython 3.12 manylinux x86_64),
#                    at the versions installed here when they are
#   .device_data/    cifar10-train-jpeg.tar.gz, copied from TARBALL (default: $SILA_TARBALL,
#                    else ../shared/data/cifar10-train-jpeg.tar.gz beside the checkout), and
#                    COMMIT: `git rev-parse HEAD`, with -dirty when tracked files have changes
#
# Idempotent: a wheel of the wanted version and an identical tarball already there are kept
# (no network is needed then). Fails in one line naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# The image lacks these (benchmarks/device_env.sh checks the same modules on the device).
packages=(ml_collections tensorboardX tqdm)
tarball=${1:-${SILA_TARBALL:-../shared/data/cifar10-train-jpeg.tar.gz}}
fail() { echo "device_prepare.sh: $*" >&2; exit 1; }

[[ -f $tarball ]] || fail "no CIFAR-10 tarball at $tarball (give its path as the argument" \
                          "or in SILA_TARBALL)"
git rev-parse HEAD >/dev/null 2>&1 || fail "$PWD is not a git checkout (COMMIT needs git)"
mkdir -p .device_wheels .device_data

# Wheels: one per package, of the version installed here if it is.
python=python3
if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob nocaseglob
for name in "${packages[@]}"; do
  version=$("$python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
            "$name" 2>/dev/null || true)
  stem=${name//-/_}  # How a wheel's file name spells it (in either case).
  old=(.device_wheels/"$stem"-*.whl)
  wanted=(.device_wheels/"$stem-${version:-*}"-*.whl)
  if [[ ${#wanted[@]} -gt 0 ]]; then continue; fi
  spec=$name${version:+==$version}
  mkdir -p "$tmp/$stem"
  if ! log=$(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
               --implementation cp --platform manylinux_2_28_x86_64 \
               --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
               -d "$tmp/$stem" "$spec" 2>&1); then
    fail "could not download a wheel of $spec for CPython 3.12: $(echo "$log" | tail -1)"
  fi
  rm -f "${old[@]}"
  mv "$tmp/$stem"/*.whl .device_wheels/
  echo "downloaded $spec into .device_wheels/"
done
shopt -u nullglob nocaseglob

# The data, copied only when it differs; then the commit the device scripts report.
if ! cmp -s "$tarball" .device_data/cifar10-train-jpeg.tar.gz; then
  rm -f .device_data/cifar10-train-jpeg.tar.gz.partial
  cp "$tarball" .device_data/cifar10-train-jpeg.tar.gz.partial
  chmod u+w .device_data/cifar10-train-jpeg.tar.gz.partial
  mv .device_data/cifar10-train-jpeg.tar.gz.partial .device_data/cifar10-train-jpeg.tar.gz
  echo "copied $tarball into .device_data/"
fi
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- || commit+=-dirty
echo "$commit" >.device_data/COMMIT

# What travels with the checkout is at most 64 MiB.
size=$(du -sbc .device_wheels .device_data | tail -1 | cut -f1)
(( size <= 64 << 20 )) || fail "the carried folders hold $(( size >> 20 )) MiB, over the" \
                               "64 MiB that travel: remove other files from them"
echo "Ready: .device_wheels/ ($(ls .device_wheels | wc -l) wheels) and .device_data/ (commit" \
     "$commit), $(( size >> 20 )) MiB to carry. On the device, call the run tool with"
echo '  carry:     [".device_wheels", ".device_data"]'
echo '  command:   bash experiments/campaign.sh'
echo '  timeout_s: 540'
echo "Afterwards, here, from the checkout root ($PWD):"
echo '  tar -xzf <files_at>/campaign.tar.gz'
echo 'then commit results/campaign/.'
