# Sourced by gpu_check.sh and gpu_train.sh (needs OUT, WHEELS, and the repository root as the working folder):
# starts OUT/status.txt, writes OUT/env.txt, exits 3 where torch sees no CUDA device, installs the wheels in
# WHEELS (if any) and darkfix itself without dependencies (or puts the checkout on PYTHONPATH).
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
