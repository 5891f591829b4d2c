#!/usr/bin/env bash
# One device call (about 9.5 minutes, for a 10-minute command limit): benchmarks/gpu_check.sh, then a
# benchmarks/gpu_train.sh leg in the time left, from the bundle of benchmarks/gpu_bundle.sh:
#   bash benchmarks/gpu_session.sh [BUNDLE]      (run in the checkout's root; $OUT: where results go)
# Leaves at most 3 files in $OUT: logs.tgz (the check's and the leg's folders, GPU utilisation every 10 s),
# train.safetensors and train.safetensors.ckpt (pass the checkpoint to gpu_train.sh to resume). Environment:
# BUDGET (seconds for the whole call, default 575), ITERATIONS (3000), LR (8e-5), LOCAL_COLOUR (0).
set -u
T0=$(date +%s)
BUNDLE=${1:-.gpu}
OUT=${OUT:?gpu_session: set OUT to the results folder}
BUDGET=${BUDGET:-575}
W=$PWD/$BUNDLE/whl
mkdir -p "$OUT/c" "$OUT/t"
lscpu > "$OUT/c/cpu.txt" 2>&1
timeout $(( BUDGET / 2 )) bash benchmarks/gpu_check.sh "$OUT/c" "$W"
echo "check rc $? after $(( $(date +%s) - T0 )) s" >> "$OUT/c/status.txt"
E=$(( $(date +%s) - T0 ))
M=$(python3 -c "print(round(max(0.5, ($BUDGET - 70 - $E) / 60), 2))")
echo "train minutes $M (check took $E s)" | tee "$OUT/t/plan.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUT/t/util.txt" 2>&1 &
U=$!
MINUTES=$M ITERATIONS=${ITERATIONS:-3000} BATCH=24 CROP=320 LR=${LR:-8e-5} LOCAL_COLOUR=${LOCAL_COLOUR:-0} \
    timeout $(( BUDGET - E )) bash benchmarks/gpu_train.sh "$OUT/t" "$BUNDLE/photos/train" "" "$W"
echo "train rc $? after $(( $(date +%s) - T0 )) s" >> "$OUT/t/status.txt"
kill $U 2>/dev/null
cd "$OUT" && mv t/train.safetensors t/train.safetensors.ckpt . 2>/dev/null
tar czf logs.tgz c t && rm -rf c t
ls -la "$OUT"
