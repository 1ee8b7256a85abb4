"""The Segment lesion panel's MNI report, in a real napari viewer (run under Xvfb), on the
bundled sample and its manual tracing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

pytest.importorskip("dipy")
pytest.importorskip("nilearn")

from napari_dunet._sample_data import SAMPLE_IMAGE, SAMPLE_MASK  # noqa: E402
from napari_dunet._widgets import report as report_widget  # noqa: E402
from napari_dunet._widgets.segment import SegmentWidget  # noqa: E402
from napari_dunet.errors import InputError  # noqa: E402
from napari_dunet.report import output_paths  # noqa: E402


@pytest.fixture
def sample_panel(make_napari_viewer, monkeypatch):
    """The sample and its tracing opened, the Segment lesion panel docked; the notifications
    the report shows, by kind."""
    viewer = make_napari_viewer()
    image, = viewer.open(SAMPLE_IMAGE, plugin="napari-dunet")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    tracing, = viewer.open(SAMPLE_MASK, plugin="napari-dunet")
    shown = {"info": [], "warning": [], "error": []}
    for kind in shown:
        monkeypatch.setattr(report_widget, f"show_{kind}", shown[kind].append)
    return viewer, widget._mni_report, image, tracing, shown


def test_a_new_mask_layer_is_the_one_reported(sample_panel):
    viewer, section, image, tracing, _ = sample_panel
    assert section._mask.value is tracing
    other = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="second mask")
    assert section._mask.value is other


def test_mask_on_another_grid_says_so(sample_panel, tmp_path):
    viewer, section, image, _, _ = sample_panel
    viewer.add_labels(np.zeros((10, 10, 10), np.uint8), name="small")
    with pytest.raises(InputError, match="not on the grid of"):
        section.job(tmp_path)


def test_stop_during_registration_writes_nothing(sample_panel, qtbot, tmp_path):
    _, section, _, _, shown = sample_panel
    job = section.job(tmp_path)
    section.start(job)
    qtbot.wait(3000)  # inside the first affine stage (the whole registration takes minutes)
    assert section._runner.worker is not None
    stopped = time.monotonic()
    section.stop()
    qtbot.waitUntil(lambda: section._runner.worker is None, timeout=20_000)
    assert time.monotonic() - stopped < 20
    assert shown["info"] == ["Report stopped; nothing was written."]
    assert not any(p.exists() for p in output_paths(tmp_path, job.name).values())
    assert section._write.enabled and not section._stop.enabled


@pytest.mark.slow
def test_report_of_the_sample_then_of_its_corrected_mask(sample_panel, qtbot, tmp_path):
    _, section, _, tracing, shown = sample_panel
    section.start(section.job(tmp_path / "first"))
    qtbot.waitUntil(lambda: section._runner.worker is None, timeout=600_000)
    assert shown["error"] == [] and shown["warning"] == []
    paths = output_paths(tmp_path / "first", "sub-ch2")
    summary = json.loads(paths["json"].read_text())
    assert summary["hemisphere"] == "left" and summary["registration"]["quality"] == "good"
    assert 0.8 < summary["total_mni_ml"] / summary["total_native_ml"] < 1.25
    text = section._status.value
    assert text.startswith(f"{summary['lesion_count']} lesions, 35.") and "left" in text

    # the user deletes the small second lesion: the report again, on the scan's transform
    labels, count = ndi.label(tracing.data)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    tracing.data = (labels == largest).astype(tracing.data.dtype)
    job = section.job(tmp_path / "second")
    assert job.transform is not None
    section.start(job)
    qtbot.waitUntil(lambda: section._runner.worker is None, timeout=120_000)
    again = json.loads(output_paths(tmp_path / "second", "sub-ch2")["json"].read_text())
    assert count == 2 and again["lesion_count"] == 1
    assert again["lesions"][0] == summary["lesions"][0]
