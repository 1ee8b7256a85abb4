"""``dunet view``: napari opens with the file (or the sample) and Segment lesion docked."""

from __future__ import annotations

import napari
import pytest
from napari.layers import Image, Labels

from napari_dunet import model_store
from napari_dunet._widgets.segment import SegmentWidget
from napari_dunet.cli import main


@pytest.fixture
def launched(monkeypatch, make_napari_viewer):
    """Run ``dunet view ...`` without blocking in the event loop; yields (exit code, viewer).

    The command's viewer comes from napari's test fixture, which also resets napari's plugin
    registrations between tests and closes the viewer afterwards.
    """
    monkeypatch.setattr(napari, "run", lambda: None)
    opened = []
    monkeypatch.setattr(napari, "Viewer", lambda **kw: opened.append(make_napari_viewer(**kw))
                        or opened[-1])

    def launch(*argv):
        before = len(opened)
        code = main(["view", *map(str, argv)])
        return code, opened[-1] if len(opened) > before else None

    yield launch
    model_store.set_checkpoint(None)


def segment_widget(viewer):
    [widget] = [w for w in viewer.window.dock_widgets.values() if isinstance(w, SegmentWidget)]
    return widget


def test_view_opens_the_file_with_the_widget_docked(launched, small_nifti, random_checkpoint):
    code, viewer = launched(*small_nifti, "--weights", random_checkpoint)
    assert code == 0
    image, mask = viewer.layers
    assert isinstance(image, Image) and isinstance(mask, Labels)
    assert tuple(image.scale) == (1.0, 1.0, 3.0) and tuple(mask.scale) == (1.0, 1.0, 3.0)
    assert segment_widget(viewer)._image.value is image
    assert viewer.dims.order == (2, 1, 0)  # axial slices
    assert model_store.current_checkpoint() == random_checkpoint


def test_view_without_a_file_opens_the_bundled_sample(launched):
    code, viewer = launched()
    assert code == 0
    [image] = viewer.layers
    assert isinstance(image, Image) and image.data.ndim == 3 and image.name == "sample T1"
    assert segment_widget(viewer)._image.value is image


def test_view_refuses_bad_files_before_opening_a_window(launched, tmp_path, capsys):
    code, viewer = launched(tmp_path / "missing.nii.gz")
    assert code == 2 and viewer is None
    assert "missing.nii.gz: no such file" in capsys.readouterr().err
    code, viewer = launched("--weights", tmp_path / "none.safetensors")
    assert code == 2 and viewer is None
