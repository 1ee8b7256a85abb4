"""The GPU training script, run here on the CPU as its docs say to first: a short run trains,
averages its last epochs and leaves weights that come back in parts and load again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_dunet import weights
from napari_dunet.checkpoint import load_checkpoint, read_metadata

pytestmark = pytest.mark.slow  # trains for a few seconds after the first draws
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_on_device.py"


def test_device_script_trains_and_leaves_weights_in_parts(shared_data, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "anatomies").mkdir(parents=True)
    (data / "lesions").mkdir()
    (data / "anatomies" / "ch2.nii.gz").symlink_to(shared_data / "ch2.nii.gz")
    for name in ("Subject_001.nii.gz", "Subject_002.nii.gz"):
        (data / "lesions" / name).symlink_to(shared_data / "lesions" / name)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out), "--device", "cpu",
         "--no-mni", "--minutes", "0.1", "--workers", "2", "--pool-size", "4", "--batch-size",
         "2", "--crop-size", "96", "--steps-per-epoch", "1", "--average", "2"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for name in ("dunet-half.safetensors", "dunet.safetensors"):  # half time, and the end
        parts = sorted(out.glob(f"{name}.part*"))
        assert len(parts) == 2 and all(p.stat().st_size < 16 * 2**20 for p in parts)
    joined = tmp_path / "joined.safetensors"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    stored = summary["stored"]["end"]
    assert joined.stat().st_size == stored["bytes"] and stored["file"] == "dunet.safetensors"

    model, meta = load_checkpoint(joined)
    start, start_meta = load_checkpoint(weights.default_checkpoint())
    assert summary["epochs"] >= 1 and summary["steps"] >= summary["epochs"]
    assert meta["averaged"] == stored["averaged"] and len(meta["averaged"]) == min(
        2, summary["epochs"])
    assert (meta["threshold"], meta["seed_threshold"]) == (
        start_meta["threshold"], start_meta["seed_threshold"])
    assert meta["training"]["synthesis"]["anatomies"] == ["ch2.nii.gz"]
    trained = model.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in start.state_dict().items()
               if v.is_floating_point())
    assert read_metadata(joined)["model"] == start_meta["model"]
