#!/usr/bin/env bash
# Rebuild the bundled default model (peopleseg/assets/default.safetensors) from scratch.
#
# This script READS ../shared/data (the project's development imagery, never shipped or committed) and needs the
# teachers installed as the README's auto-label section says (RVM through Node: set RVM_DIR). The package itself
# never reads ../shared. Stages: label, split, train, evaluate, ship. Each stage resumes if re-run.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
WORK=${WORK:-/work/default-model}
RVM_DIR=${RVM_DIR:?set RVM_DIR to the folder where RVM and TF.js were npm-installed}
POOL=$SHARED/pool
LABELS=$WORK/labels
stage=${1:-all}

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
