#!/usr/bin/env bash
# darkfix on an NVIDIA GPU, in one go (under ten minutes on an H100/H200-class GPU):
#   bash benchmarks/gpu_check.sh OUTDIR [WHEELS_DIR]
# Runs where torch (with CUDA) is installed; darkfix's other dependencies may travel as wheels in
# WHEELS_DIR (pip download -d WHEELS_DIR rawpy tifffile click rich safetensors pillow pytest hypothesis pypng
# on a machine with the network). Writes into OUTDIR: env.txt, pytest.txt (tests/test_cuda.py and the
# inference tests), bench_fp32/fp16/bf16.json and .txt (`darkfix bench --device cuda`), status.txt.
# Exit codes: 0 done, 2 bad arguments, 3 no CUDA device, 1 a step failed (see status.txt).
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh OUTDIR [WHEELS_DIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
OUT=$1
WHEELS=${2:-}
[ -n "$WHEELS" ] && [ ! -d "$WHEELS" ] && { echo "gpu_check: $WHEELS: no such wheel folder" >&2; exit 2; }
mkdir -p "$OUT" 2>/dev/null || { echo "gpu_check: $OUT: cannot create the output folder" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

status() { echo "$1" | tee -a "$OUT/status.txt"; }
: > "$OUT/status.txt"
{ date -u; nvidia-smi 2>&1 || echo "nvidia-smi: not found"; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"; } > "$OUT/env.txt" 2>&1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    status "no CUDA device: torch reports none (see env.txt)"
    exit 3
fi

if [ -n "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl >> "$OUT/env.txt" 2>&1 \
        || status "installing wheels from $WHEELS failed (continuing with what is installed)"
fi
"$PY" -m pip install -q --no-deps --no-build-isolation . >> "$OUT/env.txt" 2>&1 || export PYTHONPATH=$PWD

failed=0
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_inference.py > "$OUT/pytest.txt" 2>&1 \
    && status "tests: passed" || { status "tests: FAILED (pytest.txt)"; failed=1; }
for p in fp32 fp16 bf16; do
    timeout 120 "$PY" -m darkfix bench --device cuda --precision "$p" --runs 20 --json "$OUT/bench_$p.json" \
        > "$OUT/bench_$p.txt" 2>&1 && status "bench $p: done" || { status "bench $p: FAILED (bench_$p.txt)"; failed=1; }
done
exit $failed
