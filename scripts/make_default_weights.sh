#!/usr/bin/env bash
# The recipe of the bundled default weights (src/napari_dunet/weights/MODEL_CARD.md):
#   1. train D-UNet with `dunet train --synth` on cases drawn on the fly from three anatomies'
#      label maps (MNI152 2009a, ch2, MS patient 19's T1) with LESYMAP lesion shapes 1-80
#      (docs/synthesis.md), starting from INIT (the previous default weights);
#   2. store the mean of the weights after epochs EPOCHS-2*EVERY, EPOCHS-EVERY and EPOCHS (single
#      epochs swing) in half precision, with THRESHOLD and SEED_THRESHOLD (choose both first on the
#      validation cases: benchmarks/choose_threshold.py), as the package's default checkpoint;
#   3. score it with benchmarks/real_checks.py (real stroke T2, real MS T1 scans, a thick-slice
#      clinical domain on MS patient 26's anatomy with held-out lesions 81-100).
#
#   scripts/make_default_weights.sh INIT [WORK]   (WORK defaults to runs/default-weights)
#   EPOCHS (default 60), EVERY (4), STEPS (60 per epoch), LR (5e-5), SEED (11), THRESHOLD (0.7),
#   SEED_THRESHOLD (0.99) and DEVICE (auto) can be set; an interrupted run continues with RESUME=1
#   (same WORK). Needs nilearn (pip install -e ".[synth]") and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."

INIT=${1:?usage: scripts/make_default_weights.sh INIT_CHECKPOINT [WORK]}
WORK=${2:-runs/default-weights}
SHARED=${SHARED:-../shared/data}
mkdir -p "$WORK"

EPOCHS=${EPOCHS:-60}
EVERY=${EVERY:-4}
start=(--init "$INIT" --overwrite)
if [ "${RESUME:-0}" = 1 ]; then start=(--resume); else rm -f "$WORK"/epoch*.safetensors; fi
kept=()
for epochs in $((EPOCHS - 2 * EVERY)) $((EPOCHS - EVERY)) "$EPOCHS"; do
  kept+=("$WORK/epoch$epochs.safetensors")
  if [ ! -f "$WORK/epoch$epochs.safetensors" ]; then
    dunet train --synth mni "$SHARED/ch2.nii.gz" "$SHARED/real/ms_t1/patient19/T1w.nii.gz" \
      --lesions $(printf "$SHARED/lesions/Subject_%03d.nii.gz " $(seq 1 80)) \
      --output "$WORK/dunet.safetensors" --steps-per-epoch "${STEPS:-60}" --epochs "$epochs" \
      --batch-size 12 --crop-size 96 --lr "${LR:-5e-5}" --dtype bf16 --val-fraction 0 \
      --patience 0 --lesion-fraction 0.35 --seed "${SEED:-11}" --device "${DEVICE:-auto}" \
      "${start[@]}"
    cp "$WORK/dunet.safetensors" "$WORK/epoch$epochs.safetensors"
  fi
  start=(--resume)
done

python scripts/average_checkpoints.py src/napari_dunet/weights/dunet_default.safetensors \
  "${kept[@]}" --threshold "${THRESHOLD:-0.7}" --seed-threshold "${SEED_THRESHOLD:-0.99}"

python benchmarks/real_checks.py --json "$WORK/real_checks.json"
