"""The "Fine-tune" widget: trains in the background, reports, stops, hands over the model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_head
from napari_dunet import model_store
from napari_dunet.checkpoint import default_metadata, load_checkpoint, save_checkpoint
from napari_dunet.models import build_model
from napari_dunet.training.config import QUICK_REHEARSAL_PER_CASE

FAST = {"input_size": 32, "batch_size": 4, "steps_per_epoch": 2}
TIMEOUT_MS = 120_000


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path):
    """A narrow D-UNet checkpoint made the model in use; the model store is reset afterwards."""
    path = save_checkpoint(tmp_path / "start.safetensors", build_model(tiny_model),
                           default_metadata(tiny_model))
    model_store.set_checkpoint(path)
    yield path
    model_store.set_checkpoint(None)


def add_case(viewer, seed, shape=(40, 48, 12)):
    image, mask = make_head(shape, seed=seed)
    image_layer = viewer.add_image(image, name=f"t1-{seed}", scale=(1, 1, 3))
    labels = viewer.add_labels(mask, name=f"t1-{seed} lesion", scale=(1, 1, 3))
    return image_layer, labels


@pytest.fixture
def scores(monkeypatch):
    """The held-back DSC the engine reports: the start, then each epoch (the panel's choice is
    tested here; the engine's scoring in test_training.py)."""
    from napari_dunet.training import engine

    values = []

    def validate(self, cancel):
        value = values.pop(0) if len(values) > 1 else values[0]  # the last one repeats
        return value, value

    monkeypatch.setattr(engine._Trainer, "_validate", validate)
    return values


def make_widget(viewer, tmp_path, epochs):
    from napari_dunet._widgets.finetune import FinetuneWidget

    widget = FinetuneWidget(viewer)
    assert widget._rehearsal.value == QUICK_REHEARSAL_PER_CASE  # quick default: none
    widget.config_overrides = dict(FAST)
    widget._epochs.value, widget._crop.value, widget._rehearsal.value = epochs, 0, 0
    widget._out.value = tmp_path / "tuned.safetensors"
    return widget


def test_fine_tune_reports_progress_and_segment_uses_the_new_model(
        make_napari_viewer, qtbot, tmp_path, tiny_checkpoint, scores):
    from napari_dunet._widgets.segment import SegmentWidget

    scores += [0.2, 0.3, 0.4]  # better after every epoch
    viewer = make_napari_viewer()
    for seed in range(2):
        add_case(viewer, seed)
    segment = SegmentWidget(viewer)
    widget = make_widget(viewer, tmp_path, epochs=2)
    widget.config_overrides = {"input_size": 32}
    widget._batch.value, widget._steps.value, widget._crop.value = 4, 2, 16  # set in the panel
    widget._rehearsal.value = 1  # one synthetic case per training pair
    for image, labels in zip(viewer.layers[0::2], viewer.layers[1::2]):
        widget._image.value, widget._mask.value = image, labels
        widget.add_current_pair()
    assert len(widget._pairs.choices) == 2
    assert widget._hold_back.value == 20  # slices of each pair are held back to check on
    steps = []
    widget._progress.changed.connect(steps.append)

    widget.start()
    assert not widget._start.enabled and widget._stop.enabled
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=TIMEOUT_MS)

    out = tmp_path / "tuned.safetensors"
    assert widget._progress.value == widget._progress.max
    assert len(set(steps)) >= 4  # 4 steps
    assert widget._plot.loss_axes.lines[0].get_marker() == "."  # few steps: each one shown
    assert widget._plot.epochs[0] == [0, 1, 2] and widget._plot.epochs[2] == [0.2, 0.3, 0.4]
    assert widget._result.value == "DSC 0.200 -> 0.400: 'Segment lesion' now uses tuned.safetensors"
    assert "Trained 2 epochs" in widget._status.value
    assert model_store.current_checkpoint() == out
    assert segment._weights.value == out  # "Segment lesion" follows the store
    _, meta = load_checkpoint(out)
    assert meta["model"] == "dunet-tiny" and meta["training"]["init"] == str(tiny_checkpoint)
    assert meta["training"]["cases"] == {"train": 4, "validation": 2}  # 2 pairs, 2 synthetic
    assert [n.split("-Subject_")[0] for n in meta["training"]["case_names"][-2:]] == [
        "rehearsal-0", "rehearsal-1"]  # each with the real lesion shape it was drawn with
    config = meta["training"]["config"]
    assert config["max_minutes"] == 5  # the panel's default time limit (quick mode)
    assert config["train_layers"] == "decoder" and config["crop_size"] == 16  # set in the panel
    assert widget._out.value != out  # the next run will not overwrite this model
    assert widget._start.enabled and not widget._stop.enabled

    n_layers = len(viewer.layers)
    segment._image.value = viewer.layers["t1-0"]
    segment.run()  # segments with the fine-tuned model
    qtbot.waitUntil(lambda: len(viewer.layers) == n_layers + 1, timeout=TIMEOUT_MS)
    assert viewer.layers[-1].data.shape == viewer.layers["t1-0"].data.shape


def test_a_run_that_does_not_beat_the_start_keeps_the_model(make_napari_viewer, qtbot, tmp_path,
                                                            tiny_checkpoint, scores, monkeypatch):
    scores += [0.5, 0.45, 0.5]  # the start is never beaten
    viewer = make_napari_viewer()
    add_case(viewer, 0)
    widget = make_widget(viewer, tmp_path, epochs=2)
    out = widget._out.value
    from napari_dunet._widgets import finetune as finetune_panel

    shown = []
    monkeypatch.setattr(finetune_panel, "show_info", shown.append)
    widget.start()
    assert shown == [finetune_panel.ONE_PAIR_NOTE]  # one case: said before it runs
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=TIMEOUT_MS)
    assert widget._result.value == ("DSC 0.500 at the start, fine-tuned 0.500 at best: the "
                                    "starting model is kept")
    assert "Kept the starting weights" in widget._status.value
    assert model_store.current_checkpoint() == tiny_checkpoint and not out.exists()
    assert widget._out.value == out  # nothing written: the name stays free


def test_stop_keeps_the_last_completed_epoch(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint,
                                             scores):
    from napari_dunet.training.engine import EpochMetrics

    scores += [0.1, 0.2]
    viewer = make_napari_viewer()
    add_case(viewer, 0)
    widget = make_widget(viewer, tmp_path, epochs=200)
    widget.start()
    worker = widget._runner.worker
    worker.yielded.connect(lambda e: widget.stop() if isinstance(e, EpochMetrics) else None)
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=TIMEOUT_MS)
    assert "Stopped during epoch" in widget._status.value
    assert widget._result.value.startswith("DSC 0.100 -> 0.200: ")
    out = tmp_path / "tuned.safetensors"
    assert model_store.current_checkpoint() == out
    epoch = load_checkpoint(out)[1]["training"]["epoch"]
    assert epoch == 1 and widget._plot.epochs[0][-1] >= epoch  # the best epoch, not the last
    assert widget._progress.value < widget._progress.max


def test_stop_before_any_epoch_leaves_the_model_alone(make_napari_viewer, qtbot, tmp_path,
                                                      tiny_checkpoint):
    viewer = make_napari_viewer()
    add_case(viewer, 0)
    widget = make_widget(viewer, tmp_path, epochs=5)
    widget.start()
    widget.stop()
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=TIMEOUT_MS)
    assert model_store.current_checkpoint() == tiny_checkpoint
    assert not (tmp_path / "tuned.safetensors").exists()


def test_mismatched_mask_is_refused_with_a_message(make_napari_viewer, qtbot, tmp_path,
                                                   tiny_checkpoint):
    viewer = make_napari_viewer()
    image, _ = add_case(viewer, 0)
    viewer.add_labels(np.zeros((40, 48, 10), np.uint8), name="wrong grid")
    widget = make_widget(viewer, tmp_path, epochs=1)
    widget._image.value, widget._mask.value = image, viewer.layers["wrong grid"]
    errors = []
    widget._on_error = errors.append
    widget.start()
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=TIMEOUT_MS)
    assert len(errors) == 1 and "shape" in str(errors[0])
    assert model_store.current_checkpoint() == tiny_checkpoint


def test_stop_while_preparing_is_answered_at_once(make_napari_viewer, qtbot, tmp_path,
                                                  tiny_checkpoint, monkeypatch):
    import threading
    import time

    from napari_dunet.training import data

    release = threading.Event()
    monkeypatch.setattr(data, "prepare_case", lambda *a, **k: release.wait(60))  # a slow pair
    viewer = make_napari_viewer()
    add_case(viewer, 0)
    widget = make_widget(viewer, tmp_path, epochs=5)
    try:
        widget.start()
        qtbot.wait(300)
        assert widget._runner.worker is not None  # still preparing
        widget.stop()
        stopped = time.monotonic()
        qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=5000)  # not the minute
        answered = time.monotonic() - stopped
    finally:
        release.set()
    assert answered < 5
    assert "Stopped while preparing" in widget._status.value and widget._start.enabled
    assert widget._result.value == "-"  # nothing was scored
    assert model_store.current_checkpoint() == tiny_checkpoint


def test_folder_pairs_are_listed(make_napari_viewer, tmp_path):
    from test_training_cli import write_dataset

    viewer = make_napari_viewer()
    widget = make_widget(viewer, tmp_path, epochs=1)
    assert widget.add_folder(write_dataset(tmp_path / "atlas", n=2)) == 2
    assert widget._pairs.choices == ("atlas/sub-00", "atlas/sub-01")


def test_importing_the_widget_does_not_import_torch():
    code = ("import sys, napari_dunet._widgets.finetune; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


TRAIN_IN_A_VIEWER = """
import sys
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

sys.path.insert(0, {tests!r})
from conftest import make_head

viewer = napari.Viewer(show=True)  # the canvas: Mesa's OpenGL (and its LLVM) on Xvfb
QApplication.processEvents()
from napari_dunet.training.config import TrainConfig
from napari_dunet.training.data import prepare_case
from napari_dunet.training.engine import train

image, mask = make_head()
case = prepare_case(image, mask, np.diag([1.0, 1.0, 3.0, 1.0]), "head", 32)
config = TrainConfig(epochs=1, batch_size=2, steps_per_epoch=1, input_size=32, device="cpu")
train([case], [], config, {out!r})
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (PyPI's CUDA builds of torch bring it)")
def test_training_in_a_viewer_on_software_opengl_survives_an_installed_triton(tmp_path):
    """Triton's LLVM crashes the process beside Mesa's: a CPU run must not import it."""
    script = TRAIN_IN_A_VIEWER.format(tests=str(Path(__file__).parent),
                                      out=str(tmp_path / "out.safetensors"))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out.safetensors").is_file()
