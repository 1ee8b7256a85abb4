#!/usr/bin/env bash
# Fill the git-ignored .device/ that scripts/train_on_device.sh needs on a GPU machine with no
# network (docs/training.md, "Training on a GPU machine"): wheels of nibabel and nilearn (nilearn
# for its MNI152 files; that machine has torch, numpy, scipy and safetensors but neither of
# these), and the training data from ../shared/data: ch2, MS patient 19's T1 and lesion shapes
# 1-80 (the default weights' recipe; lesions 81-100, patient 26 and the stroke T2 stay out).
# About 25 MB, carried with the working tree (64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
rm -rf .device
mkdir -p .device/wheels .device/data/anatomies .device/data/lesions
version() { python -c "import $1; print($1.__version__)"; }
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d .device/wheels \
  "nibabel==$(version nibabel)" "nilearn==$(version nilearn)"
cp "$SHARED/ch2.nii.gz" .device/data/anatomies/ch2.nii.gz
cp "$SHARED/real/ms_t1/patient19/T1w.nii.gz" .device/data/anatomies/T1w.nii.gz
for i in $(seq 1 80); do
  cp "$SHARED/lesions/Subject_$(printf %03d "$i").nii.gz" .device/data/lesions/
done
du -sh .device
