"""Two-process training with torchrun (Gloo on CPU): one checkpoint, one log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.training.state import read_state, state_path
from test_training_cli import write_dataset

pytestmark = pytest.mark.slow  # two processes train end to end


def test_torchrun_two_processes_write_one_checkpoint(tmp_path):
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "run" / "model.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_dunet.cli", "train", "--data", str(data), "--out", str(out),
           "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--input-size", "32",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Trained 1 epoch;") == 1  # rank 0 alone logs
    assert "2 process(es) on cpu" in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors",
                                                           "model.state.safetensors"]
    _, meta = load_checkpoint(out)
    assert meta["training"]["processes"] == 2
    assert meta["training"]["cases"] == {"train": 4, "validation": 1}
    assert read_state(state_path(out))[2]["epoch"] == 1
