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
OUT=$(cd "$OUT" && pwd)  # the work below runs from the repository root
[ -z "$WHEELS" ] || WHEELS=$(cd "$WHEELS" && pwd)
cd "$(dirname "$0")/.."
. benchmarks/gpu_setup.sh

failed=0
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_inference.py > "$OUT/pytest.txt" 2>&1 \
    && status "tests: passed" || { status "tests: FAILED (pytest.txt)"; failed=1; }
for p in fp32 fp16 bf16; do
    timeout 120 "$PY" -m darkfix bench --device cuda --precision "$p" --runs 20 --json "$OUT/bench_$p.json" \
        > "$OUT/bench_$p.txt" 2>&1 && status "bench $p: done" || { status "bench $p: FAILED (bench_$p.txt)"; failed=1; }
done
exit $failed
