#!/usr/bin/env bash
# Rebuild the bundled default model (peopleseg/assets/default.safetensors) from scratch.
#
# This script READS ../shared/data (the project's development imagery, never shipped or committed) and needs the
# teachers installed as the README's auto-label section says (RVM through Node: set RVM_DIR). The package itself
# never reads ../shared. Stages: label, split, train, train2, label2, split2, train3, train4, average (CPU, about
# 5 hours on 2 cores), pack, gpu1, gpu2 (a CUDA GPU, 10 minutes of training), evaluate, ship. The CPU stages resume
# if re-run; a GPU stage re-run starts over (its step count is fitted to a time budget).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
SHARED=${SHARED:-../shared/data}
WORK=${WORK:-/work/default-model}
RVM_DIR=${RVM_DIR:?set RVM_DIR to the folder where RVM and TF.js were npm-installed}
POOL=$SHARED/pool
LABELS=$WORK/labels
stage=${1:-all}

# One training run into $WORK/OUT (configs/default_model.yaml plus ARGS), resumed from its last checkpoint if any.
train_run() {
  local out=$1
  shift
  local resume=()
  [[ -f $WORK/$out/checkpoints/last.ckpt ]] && resume=(--resume)
  (cd "$WORK" && peopleseg train "$REPO/configs/default_model.yaml" --set train.out_dir="$out" "$@" "${resume[@]}")
}

if [[ $stage == all || $stage == label ]]; then
  # vtest.avi: RVM carries its recurrent state across every frame; every 3rd frame is kept.
  peopleseg autolabel "$SHARED/video/vtest.avi" -o "$LABELS" -t "rvm:$RVM_DIR,ratio=0.5" --video-every 3 -q
  # Photos with masks: RVM merged with the dataset's own masks (disagreements become ignore).
  peopleseg autolabel "$POOL/vikramshenoy-human-seg/images" -o "$LABELS" -t "rvm:$RVM_DIR,ratio=0.5" \
    --prior-masks "$POOL/vikramshenoy-human-seg/masks" -q
  peopleseg autolabel "$POOL/coco128-seg/images" -o "$LABELS" -t "rvm:$RVM_DIR,ratio=0.5" \
    --prior-masks "$POOL/coco128-seg/masks" -q
  peopleseg autolabel "$POOL/u2net-test-data/images" -o "$LABELS" -t "rvm:$RVM_DIR,ratio=0.5" -q
  # Street scenes from elevated cameras (every 2nd ShanghaiTech-B photo): small people need RVM at full ratio.
  mapfile -t street < <(ls "$POOL"/shanghaitech-partB/images/*.jpg | awk 'NR % 2 == 1')
  peopleseg autolabel "${street[@]}" -o "$LABELS" -t "rvm:$RVM_DIR,ratio=1.0,max_side=768" --max-side 768 -q
fi

if [[ $stage == all || $stage == split ]]; then
  # Held-out split per source, and links to the held-out photos' own masks (reads ../shared/data/pool).
  python scripts/split_default_data.py "$LABELS" "$WORK/split" --pool "$POOL"
fi

if [[ $stage == all || $stage == train ]]; then
  # SegFormer-B0 from random init on the CPU (about 75 minutes on 2 quiet cores: 1500 steps of 8 crops at 384x384); re-running resumes from last.ckpt.
  train_run runs/default
fi

if [[ $stage == all || $stage == train2 ]]; then
  # Stage 2: the same data and augmentation, continued from stage 1's best weights with a fresh schedule that
  # warms up to 4e-4 and decays to zero over 1,600 steps (stage 1's validation mIoU was still rising when its
  # schedule ran out). About 65 minutes on 2 quiet cores; re-running resumes.
  train_run runs/stage2 --init runs/default/best.safetensors --set optim.lr=4e-4 --set optim.warmup_steps=50 \
    --set train.max_steps=1600 --set train.val_every=200 --set train.seed=1
fi

if [[ $stage == all || $stage == label2 ]]; then
  # The other half of the ShanghaiTech-B photos, labelled as the first half was (about 16 minutes on 2 cores).
  mapfile -t street2 < <(ls "$POOL"/shanghaitech-partB/images/*.jpg | awk 'NR % 2 == 0')
  peopleseg autolabel "${street2[@]}" -o "$LABELS" -t "rvm:$RVM_DIR,ratio=1.0,max_side=768" --max-side 768 -q
fi

if [[ $stage == all || $stage == split2 ]]; then
  # Training list for stage 3: the first split's training samples plus the new street photos that pass the same
  # confidence filter (281 of them). The held-out split stays as it was, so every stage is scored on the same images.
  python scripts/split_default_data.py "$LABELS" "$WORK/split" --pool "$POOL" --extend train4.txt
fi

if [[ $stage == all || $stage == train3 ]]; then
  # Stage 3: stage 2's best weights, 1,200 steps on the larger list, warm-up to 4e-4 and linear decay to
  # zero. About 50 minutes on 2 quiet cores; re-running resumes. (Its folder is runs/stage4: an earlier third run,
  # 700 steps at 2e-4 on the old list, did not ship; see the model card.)
  train_run runs/stage4 --init runs/stage2/best.safetensors --set data.train.list_file=split/train4.txt \
    --set optim.lr=4e-4 --set optim.warmup_steps=50 --set train.max_steps=1200 --set train.val_every=200 --set train.seed=3
fi

if [[ $stage == all || $stage == train4 ]]; then
  # Stage 4: stage 3's best weights, 1,200 more steps on the same list, warm-up to 3e-4 and linear decay to zero.
  # About 55 minutes on 2 quiet cores; re-running resumes.
  train_run runs/stage5 --init runs/stage4/best.safetensors --set data.train.list_file=split/train4.txt \
    --set optim.lr=3e-4 --set optim.warmup_steps=50 --set train.max_steps=1200 --set train.val_every=200 --set train.seed=4
fi

if [[ $stage == all || $stage == average ]]; then
  # Stage 4's best (by validation) and last weights averaged: they scored higher on the held-out split than either
  # alone (see the model card). The GPU stages start from it.
  python scripts/average_weights.py "$WORK/runs/stage5/best.safetensors" "$WORK/runs/stage5/last.safetensors" \
    -o "$WORK/runs/average.safetensors"
fi

if [[ $stage == all || $stage == pack ]]; then
  # The training and validation images, packed for a GPU machine that takes at most 64 MiB of files: at most 640 px,
  # WebP quality 65 (37 MiB for 1,106 images and masks).
  python scripts/pack_training_data.py "$LABELS/images" "$LABELS/masks" "$WORK/packed" \
    --list "$WORK/split/train4.txt" --list "$WORK/split/heldout_small.txt" --max-side 640 --quality 65
fi

# GPU stages: need a CUDA GPU (a lent H200 built the shipped model; 6.5 and 3.5 minutes of training). Each starts
# from the fp16 copy of the weights before it, as the GPU runs did (the package's file was what travelled).
gpu_run() {
  local name=$1 init=$2
  shift 2
  mkdir -p "$WORK/runs/$name"
  python scripts/average_weights.py "$init" -o "$WORK/runs/$name/init.fp16.safetensors" --fp16
  env INIT="$WORK/runs/$name/init.fp16.safetensors" PACKED="$WORK/packed" RUN="$WORK/runs/$name/run" \
    OUT="$WORK/runs/$name" "$@" bash scripts/gpu_default_model.sh
}

if [[ $stage == all || $stage == gpu1 ]]; then
  # Stage 5: 512x512 crops, batch 32, lr 4e-4 with 100 warm-up steps and linear decay over the steps that fit in
  # 6.5 minutes (2,009 on the H200: about 5 steps/s, bound by 15 data-loader processes).
  gpu_run gpu1 "$WORK/runs/average.safetensors" MINUTES=6.5 LR=4e-4 VAL_EVERY=400 SEED=7
  python scripts/average_weights.py "$WORK/runs/gpu1/gpu_best.safetensors" "$WORK/runs/gpu1/gpu_last.safetensors" \
    -o "$WORK/runs/gpu1/gpu_avg.safetensors"
fi

if [[ $stage == all || $stage == gpu2 ]]; then
  # Stage 6: stage 5's average, 3.5 more minutes at lr 2e-4 (1,258 steps); what ships is its best and last averaged.
  gpu_run gpu2 "$WORK/runs/gpu1/gpu_avg.safetensors" MINUTES=3.5 LR=2e-4 VAL_EVERY=200 SEED=8
  python scripts/average_weights.py "$WORK/runs/gpu2/gpu_best.safetensors" "$WORK/runs/gpu2/gpu_last.safetensors" \
    -o "$WORK/runs/gpu2/gpu_avg.safetensors"
fi

if [[ $stage == all || $stage == evaluate ]]; then
  model=$WORK/runs/gpu2/gpu_avg.safetensors
  # Against the teacher's labels on held-out frames and photos, per source.
  peopleseg evaluate "$model" --images "$LABELS/images" --masks "$LABELS/masks" \
    --list-file "$WORK/split/heldout.txt" --subset-from-subfolder --out "$WORK/eval/vs_teacher" -q
  # Against the datasets' own masks, side by side with the teachers (MediaPipe needs its own environment).
  python scripts/compare_on_heldout.py "$WORK/split/heldout_gt" -t "rvm:$RVM_DIR,ratio=1.0" \
    -t "rvm:$RVM_DIR,ratio=0.5" -m "$model" --json "$WORK/eval/heldout_gt.json"
fi

if [[ $stage == all || $stage == ship ]]; then
  # fp16 safetensors inside the package: what `Segmenter.from_pretrained()` and `peopleseg infer` load.
  python scripts/average_weights.py "$WORK/runs/gpu2/gpu_avg.safetensors" -o peopleseg/assets/default.safetensors --fp16
fi
