#!/usr/bin/env bash
# One GPU run of the default model's training, made for a lent machine with a short, fixed lease: the data travels
# packed (scripts/pack_training_data.py, under 40 MiB), training runs for a wall-clock budget (train.max_minutes
# fits the step count and the lr decay to the measured speed), and the weights come back to $OUT. Then, with what
# is left, the GPU speed benchmark.
#
#   PACKED=.gpu/data WHEELS=.gpu/whl MINUTES=6.5 OUT=/tmp/out scripts/gpu_default_model.sh
#
# PACKED holds images/, masks/, train4.txt and heldout_small.txt (scripts/build_default_model.sh's pack stage, from
# the labels it made out of ../shared/data). WHEELS, when set, holds wheels the machine lacks (albumentations and its
# needs), installed into /tmp/site. Starts from the bundled default weights (INIT to change).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKED=${PACKED:?set PACKED to the packed data folder}
MINUTES=${MINUTES:-6.5}
INIT=${INIT:-peopleseg/assets/default.safetensors}
WORKERS=${WORKERS:-$(($(nproc) - 1))}
BATCH=${BATCH:-32}
LR=${LR:-4e-4}
VAL_EVERY=${VAL_EVERY:-400}
SEED=${SEED:-7}
RUN=${RUN:-/tmp/gpu-run}
OUT=${OUT:?set OUT to the folder the results go to}
mkdir -p "$OUT"
rm -rf "$RUN"  # a re-run starts over: its step count is fitted to its own time budget
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ -n ${WHEELS:-} ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
python3 -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

# Crops at the model's 512x512 input (the CPU stages used 384), a larger batch, a fresh warm-up and linear decay.
status=0
python3 -m peopleseg.cli train configs/default_model.yaml --init "$INIT" -q --overwrite \
  --set data.train.images="$PACKED/images" --set data.train.masks="$PACKED/masks" \
  --set data.train.list_file="$PACKED/train4.txt" \
  --set data.val.images="$PACKED/images" --set data.val.masks="$PACKED/masks" \
  --set data.val.list_file="$PACKED/heldout_small.txt" \
  --set data.workers="$WORKERS" --set "data.augment.crop_size=[512, 512]" \
  --set train.batch_size="$BATCH" --set optim.lr="$LR" --set optim.warmup_steps=100 \
  --set train.max_steps=100000 --set train.max_minutes="$MINUTES" --set train.val_every="$VAL_EVERY" \
  --set train.checkpoint_every=200 --set train.log_every=20 --set train.seed="$SEED" --set train.out_dir="$RUN" \
  2>&1 | tee "$OUT/train.log" || status=$?
for name in best last; do
  [[ -f $RUN/$name.safetensors ]] && cp "$RUN/$name.safetensors" "$OUT/gpu_$name.safetensors"
done
cp "$RUN"/logs/version_0/metrics.csv "$OUT/metrics.csv" 2>/dev/null || true
[[ $status == 0 ]] || exit "$status"

if [[ -n ${SPEED_BUDGET_S:-} ]]; then
  timeout $((SPEED_BUDGET_S + 60)) python3 benchmarks/gpu_speed.py --models "$INIT,segformer_fan_base_hybrid" \
    --batches 32,1 --rounds 3 --budget-s "$SPEED_BUDGET_S" --compile-mode reduce-overhead --json "$OUT/gpu_speed.json" --markdown "$OUT/gpu_speed.md" || true
fi
