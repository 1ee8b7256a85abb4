#!/usr/bin/env bash
# The recipe of the bundled default weights (src/napari_dunet/weights/MODEL_CARD.md), step by step:
#   1. synthesise the cases: the 100 LESYMAP lesion shapes painted into the MNI152 2009a template
#      (seed 0, subjects sub-r001s...) and into ch2, a skull-on single-subject T1 (seed 1,
#      sub-r002s...); lesions 1-80 -> train, 81-100 -> heldout (scripts/make_training_data.sh);
#   2. train D-UNet on both training sets with `dunet train` (bf16 autocast, 96x96 crops);
#   3. store the best epoch in half precision as the package's default checkpoint;
#   4. segment both held-out sets with it and score them with `dunet evaluate`.
#
#   scripts/make_default_weights.sh [WORK]      (WORK defaults to runs/default-weights)
#   DEVICE (default auto) can be set. Needs nilearn (pip install -e ".[synth]"),
#   ../shared/data (lesions and ch2.nii.gz) and about 3 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/default-weights}
DEVICE=${DEVICE:-auto}
SHARED=${SHARED:-../shared/data}

[ -d "$WORK/mni/train" ] || LESIONS="$SHARED/lesions" scripts/make_training_data.sh "$WORK/mni"
[ -d "$WORK/ch2/train" ] || LESIONS="$SHARED/lesions" SEED=1 SITE=2 \
  scripts/make_training_data.sh "$WORK/ch2" --anatomy "$SHARED/ch2.nii.gz"

# a step schedule of the learning rate: epochs 1-3 at 5e-4, 4-5 at 1.5e-4, 6 at 5e-5 (--resume
# continues the saved state with the new rate; every epoch draws the batches it always draws)
train() {
  dunet train --data "$WORK/mni/train" "$WORK/ch2/train" --output "$WORK/dunet.safetensors" \
    --val-fraction 0.05 --batch-size 16 --crop-size 96 --steps-per-epoch 200 --patience 0 \
    --dtype bf16 --seed 0 --device "$DEVICE" "$@"
}
train --lr 5e-4 --epochs 3 --overwrite
train --lr 1.5e-4 --epochs 5 --resume
train --lr 5e-5 --epochs 6 --resume

python - "$WORK/dunet.safetensors" src/napari_dunet/weights/dunet_default.safetensors <<'EOF'
import sys

from napari_dunet.checkpoint import load_checkpoint, save_checkpoint

model, metadata = load_checkpoint(sys.argv[1])
save_checkpoint(sys.argv[2], model, metadata, half=True)
print(f"wrote {sys.argv[2]} (float16)")
EOF

for set in mni ch2; do
  dunet segment "$WORK/$set/heldout" -o "$WORK/heldout-$set" --device "$DEVICE" --overwrite
  dunet evaluate --pred "$WORK/heldout-$set" --truth "$WORK/$set/heldout" \
    --csv "$WORK/heldout-$set.csv" --overwrite
done
