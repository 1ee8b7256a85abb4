#!/usr/bin/env bash
# The validation cases the default weights' threshold is chosen on (src/napari_dunet/weights/
# MODEL_CARD.md), never the checks' cases: ch2 (a training anatomy, not a check's) with the
# held-out lesion shapes 81-100 and the appearance model of `dunet synth`,
#   runs/val/ch2           whole head (skull on), seed 3, subjects sub-r002s081..100;
#   runs/val/ch2-stripped  brain-extracted (synth.estimate_brain_mask), seed 4, sub-r003s081..100.
#
#   scripts/make_validation_cases.sh [OUT]   (OUT defaults to runs/val; needs ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/val}
SHARED=${SHARED:-../shared/data}
LESIONS=$(printf "$SHARED/lesions/Subject_%03d.nii.gz " $(seq 81 100))
mkdir -p "$OUT"

dunet synth -o "$OUT/ch2" --anatomy "$SHARED/ch2.nii.gz" --lesions $LESIONS \
  --first-index 81 --seed 3 --site 2 --overwrite

python - "$SHARED/ch2.nii.gz" "$OUT/ch2_brain.nii.gz" <<'EOF'
import sys
import nibabel as nib
import numpy as np
from napari_dunet.synth import estimate_brain_mask
image = nib.load(sys.argv[1])
data = np.asarray(image.dataobj)
brain = estimate_brain_mask(data, image.header.get_zooms()[:3])
nib.save(nib.Nifti1Image(np.where(brain, data, 0).astype(data.dtype), image.affine, image.header),
         sys.argv[2])
EOF
dunet synth -o "$OUT/ch2-stripped" --anatomy "$OUT/ch2_brain.nii.gz" --lesions $LESIONS \
  --first-index 81 --seed 4 --site 3 --overwrite
