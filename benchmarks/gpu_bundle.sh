#!/usr/bin/env bash
# Prepare what one device call needs (no network there), on a machine with the network:
#   bash benchmarks/gpu_bundle.sh PHOTOS_DIR [BUNDLE]      (BUNDLE default .gpu, git-ignored locally)
# Writes BUNDLE/whl (wheels for the GPU image's Python 3.12 of what it lacks: rawpy, isal, pypng,
# pytorch-msssim) and BUNDLE/photos/train (every Urban100 photo, held-out ones included, and every second
# of the others: about 38 MB, since a call carries at most 64 MiB with the checkout). Then, through the
# device tool: `bash benchmarks/gpu_session.sh` with carry [BUNDLE]. Exit codes: 0 done, 2 bad arguments,
# 1 a download failed.
set -uo pipefail
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: bash benchmarks/gpu_bundle.sh PHOTOS_DIR [BUNDLE]" >&2; exit 2; }
PHOTOS=$1
BUNDLE=${2:-.gpu}
[ -d "$PHOTOS/train" ] || { echo "gpu_bundle: $PHOTOS/train: no such folder" >&2; exit 2; }
cd "$(dirname "$0")/.."
grep -qx "/$BUNDLE/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo "/$BUNDLE/" >> .git/info/exclude; }
mkdir -p "$BUNDLE/whl" "$BUNDLE/photos/train"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$BUNDLE/whl" rawpy isal pypng pytorch-msssim || exit 1
cp "$PHOTOS"/train/urban100_* "$BUNDLE/photos/train/"
for set in bsds500 sunhays80; do
    ls "$PHOTOS/train" | grep "^${set}_" | awk 'NR % 2 == 0' | while read -r f; do cp "$PHOTOS/train/$f" "$BUNDLE/photos/train/"; done
done
du -sh "$BUNDLE"
