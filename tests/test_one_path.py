"""The command line, the demo and the Segment lesion panel run one segmentation path: with the
bundled weights on the bundled sample scan they give the same mask, voxel for voxel."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from napari_dunet import model_store, weights
from napari_dunet._sample_data import SAMPLE_IMAGE, SAMPLE_MASK
from napari_dunet.cli import main
from napari_dunet.commands import demo
from napari_dunet.io import load_mask, load_volume

pytestmark = pytest.mark.slow


def test_cli_demo_and_panel_give_identical_masks(make_napari_viewer, qtbot, tmp_path):
    from napari_dunet._widgets.segment import SegmentWidget

    assert main(["segment", str(SAMPLE_IMAGE), "-o", str(tmp_path), "--device", "cpu"]) == 0
    cli = load_volume(tmp_path / "sub-ch2_mask.nii.gz").data

    image = load_volume(SAMPLE_IMAGE)
    with contextlib.redirect_stdout(io.StringIO()):
        demo_mask = demo.segment_case(image, load_mask(SAMPLE_MASK), weights.default_checkpoint(),
                                      "cpu", quick=False).mask

    model_store.set_checkpoint(None)  # the bundled weights
    viewer = make_napari_viewer()
    viewer.open(SAMPLE_IMAGE, plugin="napari-dunet")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._device.value = "cpu"
    widget.run()
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=300_000)
    panel = load_volume(widget.save_mask(widget._last.labels, tmp_path / "panel.nii.gz")).data

    assert cli.sum() > 100  # the sample's lesion is found
    np.testing.assert_array_equal(demo_mask, cli)
    np.testing.assert_array_equal(panel, cli)
