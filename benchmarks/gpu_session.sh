#!/usr/bin/env bash
# One prepared GPU session (run through the device tool): throughput figures, then
# several training recipes side by side on one GPU for a fixed wall-clock budget.
# Inputs: .gpu/lists/{train,test}_list.txt pointing at .gpu/data; optional .whl wheels.
# Env: OUT (results folder), MINUTES (training budget per recipe), DEVICE, BENCH_SECONDS.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; MINUTES=${MINUTES:-6.5}; DEVICE=${DEVICE:-cuda}; BENCH_SECONDS=${BENCH_SECONDS:-4}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; $PY -c "import torch;print('torch',torch.__version__)") | tee "$OUT/session.log"
[ -n "${SKIP_BENCH:-}" ] || $PY benchmarks/train_throughput.py --device "$DEVICE" --amp both --batch_sizes 128 256 --seconds "$BENCH_SECONDS" \
    --recipes original default w32 --json_path "$OUT/throughput.json" 2>&1 | tee -a "$OUT/session.log"
common="--train_list_path .gpu/lists/train_list.txt --device $DEVICE
        --cache_audio true --amp true --max_minutes $MINUTES --num_epoch 1000 --epoch_size 25600 --batch_size 128
        --save_every_steps 0 --inference_half true"
run() { name=$1; shift; $PY train.py $common --save_model "runs/$name" "$@" > "runs_$name.log" 2>&1; }
mkdir -p runs
run w16 --width 16 --num_workers 4 &
run w32 --width 32 --num_workers 4 &
run w32c3 --width 32 --crop_seconds 3.0 --num_workers 4 &
run original --width 64 --feature spectrogram --pooling max --embedding_dim 512 --crop_seconds 2.57 --num_workers 2 &
wait
for name in w16 w32 w32c3 original; do
  echo "=== $name" >> "$OUT/session.log"
  grep -E "^model|^epoch [0-9]+:|^done|^best|rror" "runs_$name.log" >> "$OUT/session.log"
  tail -c 2000 "runs_$name.log" > /dev/null
done
for name in w16 w32 w32c3; do [ -f "runs/$name/inference.pt" ] && cp "runs/$name/inference.pt" "$OUT/$name.pt"; done
tail -c 3000 runs_w16.log > "$OUT/w16_tail.log"
cat "$OUT/session.log" | grep -E "^===|best|samples/s"
