#!/usr/bin/env bash
# Run on the GPU machine, from the repository root, with .device/ (scripts/prepare_device.sh)
# carried: installs the carried wheels, trains with scripts/train_on_device.py (arguments are
# passed on) and leaves the weights (in parts), summary.json and log.txt in $OUT.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .device/wheels/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 scripts/train_on_device.py --data .device/data --out "$OUT" --device cuda "$@" \
  2>&1 | tee "$OUT/log.txt"
