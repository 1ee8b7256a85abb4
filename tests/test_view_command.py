"""``dunet view``: napari opens with the file (or the sample) and Segment lesion docked."""

from __future__ import annotations

import subprocess
import sys

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


def test_without_a_qt_binding_view_says_how_to_install_one(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "qtpy", None)  # `import qtpy` raises ImportError
    assert main(["view"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'pip install "napari-dunet[viewer]"' in err


@pytest.mark.slow
def test_dunet_view_opens_a_window_and_closes(tmp_path):
    """The console command as a user starts it (under the test display), then closed."""
    proc = subprocess.Popen([sys.executable, "-m", "napari_dunet.cli", "view"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("dunet view: napari is open"), proc.stderr.read()
        assert proc.poll() is None  # the window is up and the event loop runs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in proc.stderr.read()


def test_the_readme_install_command_brings_a_qt_binding():
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    first = next(line for line in (root / "README.md").read_text().splitlines()
                 if line.startswith("pip install"))
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', first).group(1).split(",")
    optional = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    required = [req for extra in extras for req in optional[extra]]
    assert any(re.match(r"napari\[(pyqt5|pyqt6|pyside2|pyside6)\]", req) for req in required)
