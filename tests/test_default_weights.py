"""The bundled default weights: what they are, and that they find the lesions a user is shown."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from safetensors import safe_open

from napari_dunet import weights
from napari_dunet._sample_data import SAMPLE_IMAGE, SAMPLE_MASK
from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.cli import main
from napari_dunet.commands import demo
from napari_dunet.io import load_mask, load_volume
from napari_dunet.metrics import confusion, dice

CARD = weights.DEFAULT_CHECKPOINT.with_name("MODEL_CARD.md")


def test_default_weights_ship_in_half_precision_with_their_card():
    path = weights.default_checkpoint()
    assert path is not None, "the package ships no default weights"
    assert path.stat().st_size < 40e6
    with safe_open(path, "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes and "F64" not in dtypes
    model, meta = load_checkpoint(path)
    assert meta["model"] == "dunet" and next(model.parameters()).dtype.is_floating_point
    card = CARD.read_text()
    assert "not a clinical tool" in card and "synthetic" in card
    assert "dunet evaluate" in card and "ATLAS" in card


@pytest.mark.slow
def test_default_weights_find_the_lesion_of_the_bundled_sample(tmp_path, capsys):
    """`dunet segment` without --weights on the napari sample scan (a held-out lesion shape)."""
    assert main(["segment", str(SAMPLE_IMAGE), "-o", str(tmp_path), "--device", "cpu"]) == 0
    capsys.readouterr()
    mask = load_volume(tmp_path / "sub-ch2_mask.nii.gz").data > 0
    counts = confusion(mask, load_mask(SAMPLE_MASK).data > 0)
    assert dice(counts) >= 0.7, counts


@pytest.mark.slow
def test_quick_demo_with_the_default_weights(tmp_path):
    pytest.importorskip("nilearn")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(tmp_path), "--quick", "--no-viewer", "--device", "cpu"])
    assert code == 0
    paths = demo.output_paths(tmp_path)
    report = json.loads(paths["metrics"].read_text())
    assert report["weights"] == str(weights.DEFAULT_CHECKPOINT)
    start, stop = report["slices"]
    mask = load_volume(paths["mask"]).data > 0
    truth = load_mask(paths["truth"]).data > 0
    # on the slices it segmented (RAS+ numbering = the template's z), the mask matches the lesion
    assert mask[..., start:stop].any() and not mask[..., :start].any()
    assert dice(confusion(mask[..., start:stop], truth[..., start:stop])) >= 0.7
    assert paths["overlay"].read_bytes().startswith(b"\x89PNG")
    assert np.count_nonzero(mask) < np.count_nonzero(truth)  # a few slices of a whole lesion
