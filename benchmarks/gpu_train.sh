#!/usr/bin/env bash
# Train darkfix's weights on an NVIDIA GPU within one time-boxed run, resumable across runs:
#   bash benchmarks/gpu_train.sh OUTDIR PHOTOS_DIR [CHECKPOINT] [WHEELS_DIR]
# PHOTOS_DIR holds the clean training photos (and PHOTOS_DIR/../val, if present, the validation ones);
# CHECKPOINT is OUTDIR/train.safetensors.ckpt of an earlier run (fetched back, then passed again), else the
# run starts from the packaged weights. Writes into OUTDIR: env.txt, train.txt (the log), train.safetensors
# (the best validated weights) and train.safetensors.ckpt (9.5 MB), status.txt. Environment: MINUTES
# (default 8: a ten-minute loan with time to spare), ITERATIONS (the schedule's length, default 100000;
# keep it the same across resumed runs), BATCH (16), CROP (512), LR (1.5e-4), PLUS (1: the lamba2021-plus
# architecture; default: the packaged weights' own; keep it across resumed runs too), NOISE_AWARE (1, the
# default: lamba2021-na, started from the packaged weights), LOCAL_COLOUR (0: the weight of `darkfix train
# --local-colour`), WORKERS (processes synthesising batches; default all cores but two, none on 4 or
# fewer), PYTHON.
# Synthesis runs on the CPU cores (one worker process a batch), the network in mixed bf16 on the GPU.
# Exit codes: 0 done (or out of time, resumable), 2 bad arguments, 3 no CUDA device, 1 training failed.
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_train.sh OUTDIR PHOTOS_DIR [CHECKPOINT] [WHEELS_DIR]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 4 ] || usage
OUT=$1
PHOTOS=$2
CKPT=${3:-}
WHEELS=${4:-}
[ -d "$PHOTOS" ] || { echo "gpu_train: $PHOTOS: no such photo folder" >&2; exit 2; }
[ -z "$CKPT" ] || [ -f "$CKPT" ] || { echo "gpu_train: $CKPT: no such checkpoint" >&2; exit 2; }
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || { echo "gpu_train: $WHEELS: no such wheel folder" >&2; exit 2; }
mkdir -p "$OUT" 2>/dev/null || { echo "gpu_train: $OUT: cannot create the output folder" >&2; exit 2; }
PHOTOS=$(cd "$PHOTOS" && pwd)
OUT=$(cd "$OUT" && pwd)  # the work below runs from the repository root
[ -z "$WHEELS" ] || WHEELS=$(cd "$WHEELS" && pwd)
[ -z "$CKPT" ] || CKPT=$(cd "$(dirname "$CKPT")" && pwd)/$(basename "$CKPT")
cd "$(dirname "$0")/.."
. benchmarks/gpu_setup.sh

args=(train --images "$PHOTOS" --out "$OUT/train.safetensors" --device cuda --precision auto
      --minutes "${MINUTES:-8}" --iterations "${ITERATIONS:-100000}" --batch "${BATCH:-16}" --crop "${CROP:-512}"
      --lr "${LR:-1.5e-4}" --validate-every 1000 --local-colour "${LOCAL_COLOUR:-0}")
WORKERS=${WORKERS:-$(( $(nproc) > 4 ? $(nproc) - 2 : 0 ))}
# with workers, the training process needs few threads; without, synthesis runs on all of them
if [ "$WORKERS" -gt 0 ]; then args+=(--workers "$WORKERS" --threads 2); else args+=(--threads "$(nproc)"); fi
[ -d "$PHOTOS/../val" ] && args+=(--val "$PHOTOS/../val")
[ -d "$PHOTOS/../val_texture" ] && args+=(--val "$PHOTOS/../val_texture")
args+=(--val "$PHOTOS" --val-crops 16)  # the training folder's held-out photos: the detail-rich crops
PLUS=${PLUS:-$("$PY" -c 'from darkfix.weights import read_info; print(int(read_info().architecture.endswith("-plus")))')}
# the noise-aware architecture (issue 21's campaign) unless PLUS=1 or NOISE_AWARE=0
NOISE_AWARE=${NOISE_AWARE:-1}
if [ "$PLUS" = 1 ]; then args+=(--plus); elif [ "$NOISE_AWARE" = 1 ]; then args+=(--noise-aware); fi
if [ -n "$CKPT" ]; then
    [ "$CKPT" = "$OUT/train.safetensors.ckpt" ] || cp "$CKPT" "$OUT/train.safetensors.ckpt"
    args+=(--resume "$OUT/train.safetensors.ckpt")
else
    args+=(--init "$("$PY" -c 'from darkfix.weights import default_weights_path; print(default_weights_path())')")
fi
PYTHONUNBUFFERED=1 "$PY" -m darkfix "${args[@]}" > "$OUT/train.txt" 2>&1 \
    && status "training: done or out of time (train.txt; resume with OUTDIR/train.safetensors.ckpt)" \
    || { status "training: FAILED (train.txt)"; exit 1; }
