"""The "Segment lesion" dock widget: T1 Image layer -> editable lesion Labels layer.

The network runs in a napari thread worker (the viewer stays responsive) with a progress bar
and Cancel. The result is a Labels layer on exactly the image's voxel grid, ready to paint; its
probabilities are kept so that moving the threshold (or the seed threshold, "Seed")
re-thresholds without running the network again. A mask the user has edited is never
overwritten: a new run then makes a new layer.
torch is imported only in the worker, when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, FileEdit, FloatSlider,
                              ProgressBar, PushButton, RadioButtons)
from napari.utils.notifications import show_error, show_info, show_warning
from superqt.utils import ensure_main_thread

from .. import model_store
from ..errors import DunetError, InputError
from .._reader import show_axial
from ..io import Volume, strip_nifti_suffix
from ..layers import (PREDICTION_COLORS, PREVIEW_COLORS, has_nifti_metadata, layer_transform,
                      layer_volume, same_grid_kwargs)
from ..options import DEVICES, SegmentOptions
from .layout import Panel, wrapped_label
from .report import ReportSection
from .runner import JobRunner, failure

WHOLE, CURRENT_SLICE = "whole volume", "current slice"
BRUSH_MM = 5.0
#: stacks per batch on a CPU: a batch of 2 took 0.3 s and a batch of 16 took 3.4 s on a 2-core
#: CPU at the same throughput, so progress moves and Cancel takes effect within a second
CPU_BATCH = 2
ROLE = "dunet_role"  # metadata key marking the layers this widget made


@dataclass
class SegmentJob:
    """What a run needs, collected in the GUI thread (no napari objects)."""

    volume: Volume
    options: SegmentOptions  # thresholds None: the checkpoint's (a new checkpoint)
    point: tuple[int, ...] | None = None  # voxel of the current position: segment its axial slice
    sliced_axes: tuple[int, ...] = ()  # array axes the viewer is slicing along (2D view)
    known: tuple[np.ndarray, tuple[int, int]] | None = None  # ``segment_slice``'s ``known``


def segment_job(job: SegmentJob, progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> tuple[Path | None, Any]:
    """``(checkpoint, segmentation.SegmentationResult)`` of the current checkpoint on
    ``job.volume`` (Qt-free; runs in the worker thread)."""
    import dataclasses

    from ..inference import resolve_device
    from ..preprocessing import SliceGeometry
    from ..segmentation import segment, segment_slice

    try:
        device = resolve_device(job.options.device)
    except DunetError:
        raise DunetError(f"The device {job.options.device!r} is not available on this computer; "
                         "choose 'auto' or 'cpu'.") from None
    checkpoint = model_store.current_checkpoint()
    model, metadata = model_store.load_model(device)
    options, notes = job.options, []
    if device.type == "cpu":
        options = dataclasses.replace(options, batch_size=min(options.batch_size, CPU_BATCH))
    if job.point is None:
        result = segment(job.volume, model, metadata, options, progress=progress, cancel=cancel)
    else:
        geometry = SliceGeometry.for_volume(job.volume.data.shape, job.volume.affine)
        axis = geometry.axial_axis
        known = job.known and (job.known[0], job.known[1] or (0, geometry.n_slices))
        if job.sliced_axes and axis not in job.sliced_axes:
            notes.append(f"The view does not show axial slices: segmented the axial slice through "
                         f"the current point (axis {axis}). Use 'whole volume', or slice along "
                         "that axis, to see more.")
        result = segment_slice(job.volume, model, metadata, options,
                               geometry.axial_slice_at(job.point), progress=progress,
                               cancel=cancel, known=known)
    result.notes[:0] = notes
    return checkpoint, result


@dataclass
class _Result:
    """The last run's output, kept for re-thresholding."""

    image: Any
    labels: Any
    job: SegmentJob
    checkpoint: Path | None
    probability: np.ndarray
    threshold: float
    seed_threshold: float
    slice_range: tuple[int, int] | None
    context: tuple[int, int] | None  # a preview's: the axial slices the network ran on
    shown: np.ndarray | None = None  # a copy of the mask given to ``labels``

    @property
    def volume(self) -> Volume:
        return self.job.volume

    @property
    def preview(self) -> bool:
        """A current-slice run (it has its own layer)."""
        return self.slice_range is not None

    def mask(self) -> np.ndarray | None:
        """The mask at the result's thresholds; a preview: None when the slices the network
        ran on cannot decide it (``segmentation.slice_mask``)."""
        from ..segmentation import slice_mask, threshold_mask

        if self.preview:
            return slice_mask(self.probability, self.volume, self.slice_range[0], self.context,
                              self.threshold, self.seed_threshold)
        return threshold_mask(self.probability, self.threshold, self.seed_threshold)

    def edited(self) -> bool:
        """True when the labels differ from what the network gave (the user painted on them)."""
        return not np.array_equal(np.asarray(self.labels.data), self.shown)


class SegmentWidget(Panel):
    """Segment a stroke lesion in a 3D T1 Image layer with the current D-UNet checkpoint."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._image = ComboBox(label="Image", choices=self._image_choices,
                               tooltip="A 3D T1-weighted Image layer")
        current = model_store.current_checkpoint()
        self._weights = FileEdit(label="Weights", mode="r", filter="*.safetensors",
                                 value=current or "",
                                 tooltip="D-UNet checkpoint (.safetensors); default: bundled weights")
        self._bundled = PushButton(text="Use the bundled weights", visible=False,
                                   tooltip="Back to the default weights shipped with the plugin")
        self._device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self._scope = RadioButtons(label="Segment", choices=(WHOLE, CURRENT_SLICE), value=WHOLE,
                                   tooltip="'current slice': only the axial slice at the cursor")
        self._threshold = FloatSlider(label="Threshold", min=0.01, max=0.99, step=0.01, value=0.5,
                                      tracking=False,
                                      tooltip="Probability above which a voxel is lesion")
        self._seed_threshold = FloatSlider(
            label="Seed", min=0.0, max=0.99, step=0.01, value=0.0, tracking=False,
            tooltip="Seed threshold: keep only lesions with a voxel at least this probable, so "
                    "a confident lesion keeps its less certain rim and regions with no "
                    "confident voxel go (at or below Threshold: off)")
        self._show_probability = CheckBox(text="Show probability map", value=False)
        self._radiological = CheckBox(text="Radiological view", value=False, tooltip=(
            "Axial slices with the patient's right on the left of the screen (radiological "
            "convention); off: on the right (neurological)"))
        self._run = PushButton(text="Segment lesion")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=1, visible=False)
        self._progress.native.setFormat("%v / %m slices")
        self._summary = wrapped_label(label="Lesion", value="-")
        self._save = PushButton(text="Save mask...", tooltip="Write the lesion layer as NIfTI, "
                                "aligned with the scan it was drawn on")
        self.extend([self._image, self._weights, self._bundled, self._device, self._scope,
                     self._threshold, self._seed_threshold, self._show_probability,
                     self._radiological, self._run, self._cancel, self._progress, self._summary, self._save])
        self._mni_report = ReportSection(self, viewer, lambda: self._image.value)
        self.fit()

        self._last: _Result | None = None  # the latest run, which the threshold slider changes
        self._results: dict[tuple[Any, bool], _Result] = {}  # (image, preview) -> latest run
        self._running: tuple[Any, SegmentJob] | None = None  # (image layer, job) of the run
        self._runner = JobRunner(self, self._set_running)
        self._axial_view_set = False
        self._threshold_from: Path | None = None  # checkpoint whose thresholds the sliders took

        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._threshold.changed.connect(self._rethreshold)
        self._seed_threshold.changed.connect(self._rethreshold)
        self._weights.changed.connect(self._weights_chosen)
        self._bundled.changed.connect(lambda: model_store.set_checkpoint(None))
        self._save.changed.connect(self._save_clicked)
        self._radiological.changed.connect(lambda value: show_axial(viewer, value))
        events = viewer.layers.events
        self._layer_events = (events.inserted, events.removed, events.moved)
        for event in self._layer_events:
            event.connect(self._layers_changed)
        self._unsubscribe = model_store.subscribe(self._checkpoint_changed)
        self._bundled.visible = not model_store.using_default()
        self.native.destroyed.connect(self._closed)
        self._layers_changed()
        if viewer.layers.selection.active in self._image.choices:
            self._image.value = viewer.layers.selection.active

    # -- inputs ----------------------------------------------------------------------------
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, napari.layers.Image) and ROLE not in layer.metadata]

    def _layers_changed(self, event: Any = None) -> None:
        """Refresh the image choices; a scan that has just been opened becomes the one chosen."""
        self._image.reset_choices()
        if getattr(event, "type", None) == "inserted" and event.value in self._image.choices:
            self._image.value = event.value
        if not self._axial_view_set and any(
                has_nifti_metadata(layer.metadata) for layer in self._viewer.layers):
            show_axial(self._viewer, self._radiological.value)
            self._axial_view_set = True

    def _weights_chosen(self, value: Any) -> None:
        path = Path(value) if value and str(value) not in ("", ".") else None
        model_store.set_checkpoint(path)

    def _checkpoint_changed(self, path: Path | None) -> None:
        with self._weights.changed.blocked():
            self._weights.value = path or model_store.current_checkpoint() or ""
        self._bundled.visible = not model_store.using_default()

    def _closed(self, *_: Any) -> None:
        """The panel was closed (the runner stops a run): stop listening to the viewer."""
        self._unsubscribe()
        for event in self._layer_events:
            event.disconnect(self._layers_changed)

    def _job(self) -> SegmentJob:
        """Check the inputs and collect a run's job; raises ``DunetError`` with what to fix."""
        image = self._image.value
        if image is None:
            raise InputError("Open a T1 image first (File > Open, or File > Open Sample > "
                             "napari-dunet), then choose it as the Image.")
        if image.rgb or image.multiscale or image.ndim != 3:
            kind = "an RGB image" if image.rgb else ("a multiscale image" if image.multiscale
                                                     else f"{image.ndim}D")
            raise InputError(f"'{image.name}' is {kind}; lesion segmentation needs a 3D "
                             "(single-channel) T1 volume.")
        if model_store.current_checkpoint() is None:
            raise InputError("Choose a weights file (.safetensors): this installation has no bundled "
                             "default weights.")
        volume = layer_volume(image.data, image.metadata, layer_transform(image))
        if self._scope.value == WHOLE:
            return SegmentJob(volume, self._options())
        position = image.world_to_data(self._viewer.dims.point)
        point = tuple(int(round(float(v))) for v in position[-3:])
        sliced = tuple(self._viewer.dims.not_displayed) if self._viewer.dims.ndisplay == 2 else ()
        whole = self._results.get((image, False))  # its map decides the slice: no network run
        known = ((whole.probability, None) if whole is not None
                 and whole.checkpoint == model_store.current_checkpoint() else None)
        return SegmentJob(volume, self._options(), point, sliced, known)

    def _options(self) -> SegmentOptions:
        """The options of a run: the thresholds the result will be shown at (a new checkpoint
        brings its own)."""
        ours = model_store.current_checkpoint() == self._threshold_from
        return SegmentOptions(device=self._device.value,
                              threshold=float(self._threshold.value) if ours else None,
                              seed_threshold=float(self._seed_threshold.value) if ours else None)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Start a segmentation in a worker thread (inputs are checked first)."""
        if self._runner.worker is not None:
            return
        try:
            job = self._job()
        except DunetError as exc:
            show_warning(str(exc))
            return
        self._start(self._image.value, job)

    def _start(self, image: Any, job: SegmentJob) -> None:
        self._running = (image, job)
        self._runner.start(segment_job, job, progress=ensure_main_thread(self._show_progress),
                           returned=self._finished_run, errored=self._failed)

    def cancel(self) -> None:
        """Ask the running segmentation to stop (after the current batch); no layer is added."""
        if self._runner.worker is None:
            return
        self._runner.stop()
        self._cancel.enabled = False
        self._progress.native.setFormat("cancelling...")

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running
        self._progress.visible = running
        self._progress.value = 0
        self._progress.native.setFormat("%v / %m slices")

    def _show_progress(self, done: int, total: int) -> None:
        if not self._runner.alive:
            return
        self._progress.max = max(total, 1)
        self._progress.value = done

    def _failed(self, exc: Exception) -> None:
        kind, text = failure(exc, "Segmentation", "Not enough memory to segment this volume.",
                             "Segmentation cancelled; no layer was added.")
        (show_info if kind == "info" else show_error)(text)

    def _finished_run(self, outcome: tuple[Path | None, Any]) -> None:
        (image, job), (checkpoint, segmented) = self._running, outcome
        if image not in self._viewer.layers:
            show_info(f"'{image.name}' was closed during the run; the result was discarded.")
            return
        if checkpoint != self._threshold_from:  # a new checkpoint: its own thresholds
            self._threshold_from = checkpoint
            with self._threshold.changed.blocked(), self._seed_threshold.changed.blocked():
                self._threshold.value = segmented.threshold
                self._seed_threshold.value = segmented.seed_threshold or 0.0
        result = _Result(image, None, job, checkpoint, segmented.probability,
                         float(self._threshold.value), float(self._seed_threshold.value),
                         segmented.slice_range, segmented.context)
        mask = result.mask()
        if mask is None:  # a slider moved during a preview's run: show what the run decided
            result.threshold = segmented.threshold
            result.seed_threshold = segmented.seed_threshold or 0.0
            with self._threshold.changed.blocked(), self._seed_threshold.changed.blocked():
                self._threshold.value = result.threshold
                self._seed_threshold.value = result.seed_threshold
            mask = segmented.mask
        result.labels = self._labels_for(result, mask)
        self._last = self._results[(image, result.preview)] = result
        if self._show_probability.value or self._probability_layer(image) is not None:
            self._update_probability(image, segmented.probability)
        self._viewer.layers.selection.active = result.labels
        self._report()
        for note in segmented.notes:
            show_info(note)

    # -- results ---------------------------------------------------------------------------
    def _labels_for(self, result: _Result, mask: np.ndarray) -> Any:
        """The layer of the previous result of the same scope (whole volume, or current-slice
        preview) if it is unedited (its data replaced), else a new layer: a preview never
        replaces a whole-volume result."""
        image = result.image
        result.shown = mask.copy()  # painting changes the layer's array in place
        last = self._results.get((image, result.preview))
        if last is not None and last.labels in self._viewer.layers and not last.edited():
            last.labels.data = mask
            return last.labels
        name = f"{image.name} lesion" + (" preview" if result.preview else "")
        labels = self._viewer.add_labels(
            mask, name=name, opacity=0.6,
            metadata={**image.metadata, ROLE: "lesion preview" if result.preview else "lesion mask",
                      "source_layer": image.name},
            **same_grid_kwargs(image))
        if last is not None and last.labels in self._viewer.layers:
            show_info(f"'{last.labels.name}' has your edits, so it was kept; the new result "
                      f"is '{labels.name}'.")
        ready_to_paint(labels, PREVIEW_COLORS if result.preview else PREDICTION_COLORS)
        labels.events.paint.connect(self._report)
        return labels

    def _probability_layer(self, image: Any) -> Any:
        for layer in self._viewer.layers:
            if layer.metadata.get(ROLE) == "probability" and layer.metadata.get("source_layer") == image.name:
                return layer
        return None

    def _update_probability(self, image: Any, probability: np.ndarray) -> None:
        layer = self._probability_layer(image)
        if layer is not None:
            layer.data = probability
            return
        self._viewer.add_image(
            probability, name=f"{image.name} lesion probability", colormap="inferno",
            contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7,
            metadata={**image.metadata, ROLE: "probability", "source_layer": image.name},
            **same_grid_kwargs(image))

    def _rethreshold(self, _value: float) -> None:
        last = self._last
        if last is None or last.labels not in self._viewer.layers:
            return
        if last.edited():
            show_info(f"'{last.labels.name}' was edited by hand, so the new threshold was not "
                      "applied to it; it will apply to the next run (in a new layer).")
            return
        last.threshold = float(self._threshold.value)
        last.seed_threshold = float(self._seed_threshold.value)
        mask = last.mask()
        if mask is None:  # a preview whose regions reach past the slices run: run more
            self._rerun(last)
            return
        last.labels.data, last.shown = mask, mask.copy()
        self._report()

    def _rerun(self, last: _Result) -> None:
        """Run a preview again at the sliders' thresholds, from the slices already run."""
        if self._runner.worker is not None:
            show_info("A run is in progress; move the slider again when it has finished.")
            return
        same = last.checkpoint == model_store.current_checkpoint()
        known = (last.probability, last.context) if same else None
        self._start(last.image, SegmentJob(last.volume, self._options(), last.job.point,
                                           last.job.sliced_axes, known))

    def _report(self, _event: Any = None) -> None:
        """Show lesion volume (mL) and number of lesions (6-connected components)."""
        last = self._last
        if not self._runner.alive:
            return
        if last is None or last.labels not in self._viewer.layers:
            self._summary.value = "-"
            return
        from ..metrics import label_components
        from ..segmentation import lesion_volume_ml

        mask = np.asarray(last.labels.data) > 0
        ml = lesion_volume_ml(mask, last.volume)
        count = label_components(mask)[1]
        text = f"{ml:.2f} mL in {count} lesion{'s' if count != 1 else ''}"
        if last.slice_range is not None:
            text += f" (axial slice {last.slice_range[0]} only)"
        self._summary.value = text

    # -- saving ----------------------------------------------------------------------------
    def _save_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        layer = self._labels_to_save()
        if layer is None:
            show_warning("There is no lesion layer to save: run a segmentation or select a "
                         "Labels layer.")
            return
        source = layer.metadata.get("path")
        folder = save_folder(source)
        stem = strip_nifti_suffix(source) if source else layer.name.replace(" ", "_")
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save lesion mask", str(folder / f"{stem}_lesion_mask.nii.gz"),
            "NIfTI (*.nii.gz *.nii)")
        if path:
            self.save_mask(layer, path)

    def _labels_to_save(self) -> Any:
        active = self._viewer.layers.selection.active
        if isinstance(active, napari.layers.Labels):
            return active
        if self._last is not None and self._last.labels in self._viewer.layers:
            return self._last.labels
        return None

    def save_mask(self, layer: Any, path: str | Path) -> Path | None:
        """Write ``layer`` as a NIfTI mask aligned with its scan; errors become notifications."""
        from .._writer import write_labels

        try:
            written = Path(write_labels(path, layer.data, {"metadata": layer.metadata,
                                                           **layer_transform(layer)})[0])
        except (DunetError, OSError) as exc:
            show_error(f"Could not save the mask to {path}: {exc}")
            return None
        show_info(f"Saved {written}")
        return written


def save_folder(source: str | None) -> Path:
    """Where "Save mask..." starts: beside the scan, unless the scan is the plugin's own sample
    (inside the installed package) or has no file; then the home folder."""
    package = Path(__file__).resolve().parents[1]
    if source and package not in Path(source).resolve().parents:
        return Path(source).parent
    return Path.home()


def ready_to_paint(labels: Any, colors: dict = PREDICTION_COLORS) -> None:
    """Lesion in the network's red (or ``colors``), label 1 selected, a 5 mm brush, paint mode
    (Ctrl+Z undoes a stroke)."""
    labels.colormap = colors
    labels.selected_label = 1
    labels.brush_size = BRUSH_MM
    labels.mode = "paint"
