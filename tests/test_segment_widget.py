"""The "Segment lesion" widget driven in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import threading
from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest
import torch
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from torch import nn

from napari_dunet import model_store, segmentation
from napari_dunet._widgets import segment
from napari_dunet._widgets.segment import CURRENT_SLICE, SegmentWidget
from napari_dunet.options import SegmentOptions

from conftest import make_head


class Darkness(nn.Module):
    """A fast stand-in network: 'lesion' where the centre slice is dark tissue."""

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        centre = stacks[:, 2:3]
        return torch.sigmoid(40 * (centre - 0.1)) * torch.sigmoid(40 * (0.5 - centre))


@pytest.fixture
def fast_model(tmp_path):
    model = Darkness()
    model_store.set_checkpoint(tmp_path / "darkness.safetensors", model=model)
    yield model
    model_store.set_checkpoint(None)


@pytest.fixture
def notes(monkeypatch):
    """Messages the widget shows the user, by kind."""
    shown = {"info": [], "warning": [], "error": []}
    for kind in shown:
        monkeypatch.setattr(segment, f"show_{kind}", shown[kind].append)
    return shown


def head_file(path, shape=(40, 48, 12), codes="RAS"):
    """make_head() saved with 1x1x3 mm voxels in the axis order ``codes`` (qform 1, sform 2)."""
    image, _ = make_head(shape)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [-20, -24, -18]
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(codes))
    affine = affine @ nio.inv_ornt_aff(transform, shape)
    img = nib.Nifti1Image(nio.apply_orientation(image, transform), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 2)
    nib.save(img, path)
    return path


def open_with_widget(viewer, path):
    image, = viewer.open(path, plugin="napari-dunet")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return image, widget


def run_and_wait(qtbot, widget, timeout=180_000):
    widget.run()
    qtbot.waitUntil(lambda: widget._runner.worker is None, timeout=timeout)


def gate_progress(monkeypatch, gate: threading.Event):
    """Make the worker wait after each batch until ``gate`` is set by the GUI thread."""
    real = segment.ensure_main_thread

    def gated(callback):
        queued = real(callback)

        def progress(done, total):
            queued(done, total)
            if not gate.wait(30):
                raise RuntimeError("the GUI thread never answered")
        return progress

    monkeypatch.setattr(segment, "ensure_main_thread", gated)


def forbid_network(monkeypatch):
    """From now on, running the network fails the test."""
    from napari_dunet import inference

    def predict_volume(*args, **kwargs):
        raise AssertionError("the network ran")

    monkeypatch.setattr(inference, "predict_volume", predict_volume)


def labels_layers(viewer):
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def test_checkpoint_gives_an_aligned_editable_mask_saved_like_the_scan(
        make_napari_viewer, qtbot, small_nifti, random_checkpoint, notes, tmp_path):
    viewer = make_napari_viewer()
    image, widget = open_with_widget(viewer, small_nifti[0])
    widget._weights.value = random_checkpoint
    assert model_store.current_checkpoint() == random_checkpoint
    try:
        run_and_wait(qtbot, widget)
    finally:
        model_store.set_checkpoint(None)
    assert notes["error"] == [] and notes["warning"] == []
    [labels] = labels_layers(viewer)
    assert labels.data.shape == image.data.shape and labels.data.dtype == np.uint8
    for voxel in ([0, 0, 0], [39, 47, 11], [12, 30, 5]):
        assert np.allclose(labels.data_to_world(voxel), image.data_to_world(voxel))
    assert np.allclose(image.data_to_world([12, 30, 5]), [-8, 6, -3])  # the file's mm position
    # the same probabilities as the core on the file, slice for slice
    from napari_dunet.checkpoint import load_checkpoint
    from napari_dunet.inference import predict_volume
    from napari_dunet.io import load_volume

    core = predict_volume(load_volume(small_nifti[0]), load_checkpoint(random_checkpoint)[0],
                          SegmentOptions(device="cpu", slice_range=(5, 7)))
    assert np.allclose(widget._last.probability[..., 5:7], core[..., 5:7], atol=1e-5)
    assert np.array_equal(labels.data, widget._last.probability >= 0.5)
    # ready to correct
    assert viewer.layers.selection.active is labels
    assert labels.mode == "paint" and labels.selected_label == 1 and labels.brush_size == 5
    assert "mL in" in widget._summary.value
    # saved with the scan's affine and header codes, read back identical
    out = widget.save_mask(labels, tmp_path / "out" / "sub-01_lesion_mask.nii.gz")
    written, source = nib.load(out), nib.load(small_nifti[0])
    assert np.array_equal(written.affine, source.affine)
    for code in ("qform_code", "sform_code"):
        assert written.header[code] == source.header[code]
    assert np.array_equal(np.asarray(written.dataobj), labels.data)


@pytest.mark.parametrize("codes", ["PIR", "LAS"])
def test_mask_of_a_non_ras_scan_matches_the_command_line_result(
        make_napari_viewer, qtbot, fast_model, notes, tmp_path, codes):
    path = head_file(tmp_path / f"sub-02_{codes}_T1w.nii.gz", codes=codes)
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, path)
    run_and_wait(qtbot, widget)
    [labels] = labels_layers(viewer)
    assert labels.data.any()
    out = widget.save_mask(labels, tmp_path / "mask.nii.gz")
    expected = segmentation.segment(path, fast_model, {},
                                    SegmentOptions(threshold=0.5, device="cpu")).mask
    written = nib.load(out)
    assert np.array_equal(np.asarray(written.dataobj), expected)
    assert np.array_equal(written.affine, nib.load(path).affine)


def test_current_slice_segments_the_axial_slice_at_the_cursor(
        make_napari_viewer, qtbot, fast_model, notes, tmp_path):
    viewer = make_napari_viewer()
    image, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    assert viewer.dims.order == (2, 1, 0)  # the widget shows axial slices of NIfTI scans
    widget._scope.value = CURRENT_SLICE
    viewer.dims.set_point(2, image.data_to_world([0, 0, 6])[2])
    run_and_wait(qtbot, widget)
    preview = viewer.layers["t1 lesion preview"]
    assert list(np.flatnonzero(np.asarray(preview.data).any(axis=(0, 1)))) == [6]
    assert widget._last.slice_range == (6, 7)
    assert "axial slice 6 only" in widget._summary.value
    assert notes["info"] == []
    # a sagittal view: still the axial slice through the point, and the user is told
    viewer.dims.order = (0, 1, 2)
    viewer.dims.set_point(2, image.data_to_world([0, 0, 3])[2])
    run_and_wait(qtbot, widget)
    assert list(np.flatnonzero(np.asarray(preview.data).any(axis=(0, 1)))) == [3]
    assert any("does not show axial slices" in note for note in notes["info"])


def lesion_map(seed_slice: int) -> np.ndarray:
    """A network's map of a 40x48x30 scan: a lesion (0.75) through axial slices 2..25 whose
    only confident voxels (0.995) lie in ``seed_slice``."""
    p = np.zeros((40, 48, 30), np.float32)
    p[20:28, 24:32, 2:26] = 0.75
    p[22:24, 26:28, seed_slice] = 0.995
    return p


@pytest.fixture
def mapped(monkeypatch):
    """The network gives ``mapped.map`` on the slices a run asks for; ``mapped.ran`` lists the
    slice ranges run."""
    from napari_dunet import inference

    class Network:
        map, ran = lesion_map(24), []

        def predict(self, volume, model, options, **_):
            self.ran.append(options.slice_range)
            start, stop = options.slice_range or (0, 30)
            p = np.zeros_like(self.map)
            p[..., start:stop] = self.map[..., start:stop]
            return p

    network = Network()
    monkeypatch.setattr(inference, "predict_volume", network.predict)
    return network


def preview_slice_3(viewer, qtbot, fast_model, tmp_path, seed_threshold: float):
    """The test head in ``viewer`` with a seeded checkpoint, previewed on slice 3."""
    image, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz", (40, 48, 30)))
    model_store.set_checkpoint(tmp_path / "seeded.safetensors", model=fast_model, metadata={
        "model": "dunet", "threshold": 0.7, "seed_threshold": seed_threshold})
    widget._scope.value = CURRENT_SLICE
    viewer.dims.set_point(2, image.data_to_world([0, 0, 3])[2])
    run_and_wait(qtbot, widget)
    return image, widget


def test_current_slice_and_whole_volume_agree_on_a_lesion_slice(
        make_napari_viewer, qtbot, fast_model, mapped, notes, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    # the seed is 21 slices away from slice 3
    image, widget = preview_slice_3(viewer, qtbot, fast_model, tmp_path, 0.99)
    preview = viewer.layers["t1 lesion preview"]
    assert np.count_nonzero(preview.data) == 64 and "0.19 mL in 1 lesion" in widget._summary.value
    widget._scope.value = "whole volume"
    run_and_wait(qtbot, widget)
    whole = np.asarray(viewer.layers["t1 lesion"].data)
    assert np.array_equal(preview.data[..., 3], whole[..., 3])
    # with the whole volume's map at hand, a preview runs no network and agrees on every slice
    widget._scope.value = CURRENT_SLICE
    with monkeypatch.context() as patch:
        forbid_network(patch)
        for z in (1, 2, 14, 25, 26):
            viewer.dims.set_point(2, image.data_to_world([0, 0, z])[2])
            run_and_wait(qtbot, widget)
            assert np.array_equal(preview.data[..., z], whole[..., z])
            assert np.count_nonzero(preview.data) == np.count_nonzero(whole[..., z])
    assert notes["error"] == []


def test_a_seed_slider_on_a_preview_runs_only_the_slices_it_needs(
        make_napari_viewer, qtbot, fast_model, mapped, notes, tmp_path):
    mapped.map = np.minimum(lesion_map(6), 0.95)  # seeds of 0.95 in slice 6
    viewer = make_napari_viewer()
    image, widget = preview_slice_3(viewer, qtbot, fast_model, tmp_path, 0.9)
    preview = viewer.layers["t1 lesion preview"]
    assert np.count_nonzero(preview.data) == 64  # seeded in slice 6
    context, ran = widget._last.context, list(mapped.ran)
    assert context[0] <= 3 and 6 < context[1] < 30
    widget._threshold.value = 0.8  # decided by the slices run: no network
    qtbot.waitUntil(lambda: widget._runner.worker is None)
    assert mapped.ran == ran and not preview.data.any()
    widget._threshold.value = 0.7
    widget._seed_threshold.value = 0.96  # no seed in the slices run: the lesion may hold one above
    qtbot.waitUntil(lambda: widget._runner.worker is None and len(mapped.ran) > len(ran),
                    timeout=60_000)
    more = sorted(mapped.ran[len(ran):])  # only slices not run before, up to the lesion's end
    assert more[0][0] == context[1] and more[-1][1] > 25
    assert all(a[1] == b[0] for a, b in zip(more, more[1:]))
    assert not preview.data.any() and "0.00 mL" in widget._summary.value


def test_a_current_slice_preview_never_replaces_the_whole_volume_result(
        make_napari_viewer, qtbot, fast_model, notes, tmp_path):
    from napari_dunet.layers import PREDICTION_COLORS, PREVIEW_COLORS, TRACING_COLORS

    viewer = make_napari_viewer()
    image, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    mask_path = tmp_path / "t1_label-L_mask.nii.gz"
    nib.save(nib.Nifti1Image(make_head()[1], nib.load(tmp_path / "t1.nii.gz").affine), mask_path)
    tracing, = viewer.open(mask_path, plugin="napari-dunet")
    run_and_wait(qtbot, widget)
    whole = viewer.layers["t1 lesion"]
    full_mask = np.asarray(whole.data).copy()
    assert np.count_nonzero(full_mask.any(axis=(0, 1))) > 1
    widget._scope.value = CURRENT_SLICE
    for z in (6, 4):  # a second preview replaces the first, not the whole-volume result
        viewer.dims.set_point(2, image.data_to_world([0, 0, z])[2])
        run_and_wait(qtbot, widget)
        assert np.array_equal(whole.data, full_mask)
        preview = viewer.layers["t1 lesion preview"]
        assert list(np.flatnonzero(np.asarray(preview.data).any(axis=(0, 1)))) == [z]
    assert [layer.name for layer in labels_layers(viewer)] == [
        "t1_label-L_mask", "t1 lesion", "t1 lesion preview"]
    colours = [tuple(np.round(layer.colormap.map(np.array([1]))[0], 3))
               for layer in (tracing, whole, preview)]
    assert len(set(colours)) == 3  # tracing, prediction and preview each in their own colour
    assert PREDICTION_COLORS[1] != PREVIEW_COLORS[1] != TRACING_COLORS[1]


def test_cancel_mid_run_adds_no_layer(make_napari_viewer, qtbot, fast_model, notes, tmp_path,
                                      monkeypatch):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz", shape=(40, 48, 40)))
    gate, seen = threading.Event(), []
    gate_progress(monkeypatch, gate)

    def first_batch_done(done, total):
        seen.append((done, total))
        widget.cancel()
        seen.append(widget._progress.native.text())  # acknowledged before the batch ends
        gate.set()

    monkeypatch.setattr(widget, "_show_progress", first_batch_done)
    layers_before = list(viewer.layers)
    run_and_wait(qtbot, widget)
    assert len(seen) == 2 and 0 < seen[0][0] < seen[0][1] == 40  # stopped part way
    assert seen[1] == "cancelling..."
    assert list(viewer.layers) == layers_before
    assert notes["info"] == ["Segmentation cancelled; no layer was added."]
    assert widget._run.enabled and not widget._cancel.enabled


def test_progress_counts_slices_a_few_at_a_time_on_a_cpu(make_napari_viewer, qtbot, fast_model,
                                                         tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz", shape=(40, 48, 20)))
    widget._device.value = "cpu"
    seen = []
    real = widget._show_progress
    monkeypatch.setattr(widget, "_show_progress", lambda done, total: (
        seen.append((done, total, widget._progress.native.text())), real(done, total)))
    run_and_wait(qtbot, widget)
    steps = np.diff([0] + [done for done, _, _ in seen])
    assert seen[-1][:2] == (20, 20) and steps.max() <= segment.CPU_BATCH
    assert seen[-1][2].endswith("/ 20 slices")


def test_closing_napari_mid_run_stops_the_run_cleanly(make_napari_viewer, qtbot, fast_model,
                                                      notes, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz", shape=(40, 48, 20)))
    listeners = len(model_store._listeners)
    gate = threading.Event()
    gate_progress(monkeypatch, gate)

    def close_napari(done, total):
        viewer.close()
        gate.set()

    monkeypatch.setattr(widget, "_show_progress", close_napari)
    widget.run()
    qtbot.waitUntil(lambda: widget._runner.worker is None and not widget._runner.alive, timeout=60_000)
    assert widget._runner.stop_requested.is_set()
    assert notes == {"info": [], "warning": [], "error": []}
    assert len(model_store._listeners) == listeners - 1


def test_viewer_stays_responsive_during_a_run(make_napari_viewer, qtbot, fast_model, notes,
                                              tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz", shape=(40, 48, 20)))
    gate, ticks_while_running = threading.Event(), []

    def tick():
        if widget._runner.worker is not None:
            ticks_while_running.append(1)
        if len(ticks_while_running) >= 5:
            gate.set()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(5)
    gate_progress(monkeypatch, gate)  # the worker waits for 5 timer ticks after its first batch
    try:
        run_and_wait(qtbot, widget)
    finally:
        timer.stop()
    assert len(ticks_while_running) >= 5
    assert notes["error"] == [] and len(labels_layers(viewer)) == 1


def test_threshold_and_reruns_never_clobber_an_edited_mask(
        make_napari_viewer, qtbot, fast_model, notes, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    run_and_wait(qtbot, widget)
    [first] = labels_layers(viewer)
    probability = widget._last.probability
    # threshold: re-applied to the kept probabilities, no network run
    with monkeypatch.context() as patch:
        forbid_network(patch)
        widget._threshold.value = 0.8
    assert np.array_equal(first.data, probability >= 0.8)
    # an unedited result is updated in place by a new run
    run_and_wait(qtbot, widget)
    assert labels_layers(viewer) == [first]
    # the user corrects the mask: undo works, and nothing overwrites the edit
    voxel = tuple(np.argwhere(first.data == 0)[0])
    first.paint(voxel, 1)
    first.undo()
    assert first.data[voxel] == 0
    first.paint(voxel, 1)
    edited = first.data.copy()
    widget._threshold.value = 0.3
    assert np.array_equal(first.data, edited)
    assert any("edited by hand" in note for note in notes["info"])
    run_and_wait(qtbot, widget)
    first_again, second = labels_layers(viewer)
    assert first_again is first and np.array_equal(first.data, edited)
    assert second.name != first.name and np.array_equal(second.data, probability >= 0.3)
    assert any("has your edits" in note for note in notes["info"])


def test_threshold_starts_at_the_checkpoint_recommendation(make_napari_viewer, qtbot, fast_model,
                                                           notes, tmp_path, monkeypatch):
    from napari_dunet import inference

    asked = []  # the threshold each run predicts for (mixed precision checks the map there)
    real = inference.predict_volume
    monkeypatch.setattr(inference, "predict_volume",
                        lambda *a, **k: asked.append(a[2].threshold) or real(*a, **k))
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    model_store.set_checkpoint(tmp_path / "tuned.safetensors", model=fast_model,
                               metadata={"model": "dunet", "threshold": 0.3})
    run_and_wait(qtbot, widget)
    assert widget._threshold.value == pytest.approx(0.3)
    assert widget._seed_threshold.value == 0.0  # a checkpoint without a seed: off
    assert np.array_equal(labels_layers(viewer)[0].data, widget._last.probability >= 0.3)
    widget._threshold.value = 0.6  # the user's choice then stays for later runs
    run_and_wait(qtbot, widget)
    assert widget._threshold.value == pytest.approx(0.6)
    assert asked == [pytest.approx(0.3), pytest.approx(0.6)]
    # a checkpoint recommending a seed threshold sets both sliders, and the mask follows them
    model_store.set_checkpoint(tmp_path / "seeded.safetensors", model=fast_model, metadata={
        "model": "dunet", "threshold": 0.3, "seed_threshold": 0.9})
    run_and_wait(qtbot, widget)
    probability, labels = widget._last.probability, labels_layers(viewer)[0]
    assert (widget._threshold.value, widget._seed_threshold.value) == pytest.approx((0.3, 0.9))
    assert np.array_equal(labels.data, segmentation.threshold_mask(probability, 0.3, 0.9))
    with monkeypatch.context() as patch:  # re-applied to the kept probabilities
        forbid_network(patch)
        widget._seed_threshold.value = 0.0
    assert np.array_equal(labels.data, probability >= 0.3)


def test_probability_map_is_shown_on_the_same_grid(make_napari_viewer, qtbot, fast_model, notes,
                                                   tmp_path):
    viewer = make_napari_viewer()
    image, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    widget._show_probability.value = True
    run_and_wait(qtbot, widget)
    [probability] = [layer for layer in viewer.layers if isinstance(layer, Image) and layer is not image]
    assert np.array_equal(probability.data, widget._last.probability)
    assert widget._image.value is image and probability not in widget._image.choices
    assert np.allclose(probability.data_to_world([3, 4, 5]), image.data_to_world([3, 4, 5]))


def test_a_new_checkpoint_from_another_widget_is_used(make_napari_viewer, fast_model, tmp_path):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    new = tmp_path / "finetuned.safetensors"
    model_store.set_checkpoint(new, model=fast_model)
    assert widget._weights.value == new
    assert model_store.load_model("cpu")[0] is fast_model


def test_model_store_loads_once_and_reloads_a_changed_file(random_checkpoint, tmp_path):
    import shutil

    from napari_dunet.weights import default_checkpoint

    path = tmp_path / "model.safetensors"
    shutil.copyfile(random_checkpoint, path)
    seen = []
    unsubscribe = model_store.subscribe(seen.append)
    try:
        model_store.set_checkpoint(path)
        first, metadata = model_store.load_model("cpu")
        assert model_store.load_model("cpu")[0] is first and metadata["model"] == "dunet"
        shutil.copyfile(random_checkpoint, tmp_path / "new.safetensors")
        (tmp_path / "new.safetensors").replace(path)  # a training run wrote a new version
        assert model_store.load_model("cpu")[0] is not first
        model_store.set_checkpoint(None)
        assert seen == [path, None]
        assert model_store.current_checkpoint() == default_checkpoint()  # back to the bundled
    finally:
        unsubscribe()
        model_store.set_checkpoint(None)


def test_bad_inputs_get_a_plain_message_and_lose_no_layer(
        make_napari_viewer, qtbot, fast_model, notes, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.run()  # nothing open
    assert "Open a T1 image first" in notes["warning"][-1]
    viewer.add_labels(np.zeros((5, 6, 7), np.uint8), name="a mask")
    widget.run()  # only a Labels layer: not offered as an image
    assert "Open a T1 image first" in notes["warning"][-1]
    flat = viewer.add_image(np.ones((30, 30)), name="photo")
    widget._image.value = flat
    widget.run()
    assert "'photo' is 2D" in notes["warning"][-1]
    image, = viewer.open(head_file(tmp_path / "t1.nii.gz"), plugin="napari-dunet")
    widget._image.value = image
    layers = list(viewer.layers)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    widget._weights.value = broken
    run_and_wait(qtbot, widget)
    assert "not a readable safetensors checkpoint" in notes["error"][-1]
    model_store.set_checkpoint(tmp_path / "darkness.safetensors", model=fast_model)

    if not torch.cuda.is_available():
        widget._device.value = "cuda"
        run_and_wait(qtbot, widget)
        assert "'cuda' is not available on this computer" in notes["error"][-1]
    assert list(viewer.layers) == layers and widget._runner.worker is None
    assert all("Traceback" not in message for kind in notes.values() for message in kind)


def test_gpu_out_of_memory_falls_back_to_the_cpu(make_napari_viewer, qtbot, fast_model, notes,
                                                 tmp_path, monkeypatch):
    from napari_dunet import inference

    real_predict = inference.predict_volume

    def predict(volume, model, options, **kwargs):
        if torch.device(options.device).type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_predict(volume, model, options, **kwargs)

    real_resolve = inference.resolve_device
    monkeypatch.setattr(inference, "resolve_device",
                        lambda name: torch.device("cuda") if name == "cuda" else real_resolve(name))
    monkeypatch.setattr(inference, "predict_volume", predict)
    monkeypatch.setattr(model_store, "load_model", lambda device: (fast_model, {}))
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    widget._device.value = "cuda"
    run_and_wait(qtbot, widget)
    assert notes["error"] == []
    assert any("ran out of memory" in note and "CPU" in note for note in notes["info"])
    assert len(labels_layers(viewer)) == 1


def test_save_starts_beside_the_scan_and_bundled_weights_are_one_click_away(
        make_napari_viewer, random_checkpoint, tmp_path):
    from napari_dunet import weights
    from napari_dunet._sample_data import SAMPLE_IMAGE
    from napari_dunet._widgets.segment import save_folder

    assert save_folder(str(tmp_path / "sub-01_T1w.nii.gz")) == tmp_path
    assert save_folder(str(SAMPLE_IMAGE)) == Path.home()  # not inside the installed package
    assert save_folder(None) == Path.home()
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        button = widget._bundled.native  # shown or hidden (the viewer's window is not shown)
        assert button.isHidden()
        model_store.set_checkpoint(random_checkpoint)  # e.g. the Fine-tune panel's result
        assert not button.isHidden() and Path(widget._weights.value) == random_checkpoint
        button.click()
        assert model_store.current_checkpoint() == weights.default_checkpoint()
        assert button.isHidden()
    finally:
        model_store.set_checkpoint(None)


def test_radiological_view_puts_the_patients_right_on_the_left(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = open_with_widget(viewer, head_file(tmp_path / "t1.nii.gz"))
    camera = getattr(viewer, "scene", viewer).camera
    widget._radiological.value = True
    assert tuple(str(o) for o in camera.orientation2d) == ("up", "left")
    widget._radiological.value = False
    assert tuple(str(o) for o in camera.orientation2d) == ("up", "right")


def test_the_preview_colour_differs_from_a_mask_over_a_tracing(make_napari_viewer, qtbot):
    """As napari draws them over a grey scan: the preview against red over green (where the
    network's mask and a tracing overlap), and against each alone."""
    from napari_dunet.layers import PREDICTION_COLORS, PREVIEW_COLORS, TRACING_COLORS

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.full((1, 40, 40), 0.5, np.float32), contrast_limits=(0, 1))
    layers = {}
    for name, colours in (("tracing", TRACING_COLORS), ("mask", PREDICTION_COLORS),
                          ("preview", PREVIEW_COLORS)):
        layers[name] = viewer.add_labels(np.ones((1, 40, 40), np.uint8), name=name, opacity=0.6)
        layers[name].colormap = colours

    def centre_colour(*shown):
        for name, layer in layers.items():
            layer.visible = name in shown
        qtbot.wait(50)
        shot = viewer.screenshot(canvas_only=True, flash=False)
        return shot[shot.shape[0] // 2, shot.shape[1] // 2, :3].astype(float)

    preview = centre_colour("preview")
    for others in (("tracing", "mask"), ("mask",), ("tracing",)):
        assert np.abs(centre_colour(*others) - preview).max() >= 100, others
