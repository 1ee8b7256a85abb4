#!/usr/bin/env bash
# Synthesise the data for training and checking the default weights (docs/synthesis.md):
# the 100 real lesion shapes of ../shared/data/lesions painted into the MNI152 2009a template
# (the ATLAS grid), lesions 1-80 -> OUT/train (sub-r001s001..080), 81-100 -> OUT/heldout
# (sub-r001s081..100), both in the ATLAS v2.0 BIDS layout. Same seed, same files.
#
#   scripts/make_training_data.sh [OUT [extra dunet synth options...]]
#   OUT defaults to runs/synthetic; LESIONS (../shared/data/lesions), SEED (0) and SITE (1: subjects
#   sub-r001s...; another SITE keeps a second anatomy's cases apart by name) can be set.
#   Needs nilearn (pip install -e ".[synth]"); about 1.7 GB for the 100 cases (float32 cases are the largest).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/synthetic}
shift || true
LESIONS=${LESIONS:-../shared/data/lesions}
SEED=${SEED:-0}
SITE=${SITE:-1}

train=()
heldout=()
for i in $(seq 1 100); do
  file=$(printf "%s/Subject_%03d.nii.gz" "$LESIONS" "$i")
  [ -f "$file" ] || { echo "missing lesion mask: $file" >&2; exit 2; }
  if [ "$i" -le 80 ]; then train+=("$file"); else heldout+=("$file"); fi
done

# the two sets are independent: make them side by side
dunet synth -o "$OUT/train" --lesions "${train[@]}" --first-index 1 --seed "$SEED" --site "$SITE" "$@" &
train_job=$!
dunet synth -o "$OUT/heldout" --lesions "${heldout[@]}" --first-index 81 --seed "$SEED" --site "$SITE" "$@" &
heldout_job=$!
wait "$train_job"
wait "$heldout_job"
echo "training cases: $OUT/train ($(find "$OUT/train" -name '*_T1w.nii.gz' | wc -l)); held out: $OUT/heldout ($(find "$OUT/heldout" -name '*_T1w.nii.gz' | wc -l))"
