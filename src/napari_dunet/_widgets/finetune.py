"""The "Fine-tune" dock widget: teach the current model from hand-corrected masks.

The user's loop: segment, correct the Labels layer by hand, fine-tune on the corrected cases,
segment again. Training pairs are (Image layer, Labels layer) pairs and labelled cases from a
folder. ``training.finetune.fine_tune_events`` runs in a napari generator worker and yields
its events (progress bar, live plot of training loss and held-back DSC) while the viewer stays
responsive; Stop is answered within a step (under a second in quick mode). The new model
becomes the model of "Segment lesion" (``model_store.set_checkpoint``) only when it beat the
starting weights on the held-back data; the status says which. torch is imported only in the
worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generator

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, FileEdit, LineEdit, ProgressBar, PushButton,
                              Select, SpinBox)
from napari.utils.notifications import show_error, show_info, show_warning

from .. import model_store
from ..errors import DunetError, InputError
from ..io import Case
from ..layers import layer_volume, same_grid_kwargs
from ..options import DEVICES, LOSSES, TRAIN_LAYERS
from ..training.config import (HOLD_BACK, MAX_REHEARSAL, QUICK, QUICK_REHEARSAL_PER_CASE,
                               TrainConfig, rehearsal_count)
from ..training.finetune import CorrectedCase, Preparing
from .layout import Panel, elided_label, wrapped_label
from .runner import JobRunner, failure

MODEL_FOLDER = Path.home() / "napari-dunet" / "models"
PROGRESS_STEPS = 1000


# measured (docs/training.md, "Does it pay off?"): one corrected case lowered the other cases of
# its domain by 0.02-0.03 while three raised them
ONE_PAIR_NOTE = ("One training pair: the new model is checked on slices of that same case, so "
                 "it may fit this scan and do worse on others. Correct three or more cases "
                 "before relying on it elsewhere.")


@dataclass
class FinetuneJob:
    """What a run needs, collected in the GUI thread (no napari objects)."""

    pairs: list[CorrectedCase | Case]
    config: TrainConfig
    out: Path
    init: Path | None
    hold_back: float = HOLD_BACK
    rehearsal: int = 0  # synthetic cases mixed in against forgetting
    notes: list[str] = field(default_factory=list)


def finetune_events(job: FinetuneJob, cancel: Any = None) -> Generator[Any, None, Any]:
    """``training.finetune.fine_tune_events`` for ``job`` (runs in the worker thread)."""
    from ..training.finetune import fine_tune_events

    return (yield from fine_tune_events(job.pairs, job.config, job.out, job.init,
                                        hold_back=job.hold_back, rehearsal=job.rehearsal,
                                        cancel=cancel))


def _has_nilearn() -> bool:
    from importlib.util import find_spec

    return find_spec("nilearn") is not None


class FinetuneWidget(Panel):
    """Fine-tune the current segmentation model on corrected lesion masks."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        defaults = TrainConfig(**QUICK)  # the panel starts in the quick few-case mode
        self._image = ComboBox(label="Image", choices=self._choices(napari.layers.Image),
                               tooltip="A 3D T1-weighted Image layer")
        self._mask = ComboBox(label="Mask", choices=self._choices(napari.layers.Labels),
                              tooltip="The lesion Labels layer you corrected on that image")
        self._add_pair = PushButton(text="Add pair")
        self._add_folder = PushButton(text="Add folder...",
                                      tooltip="Images with lesion masks (ATLAS/BIDS or flat)")
        self._pairs = Select(label="Training pairs", choices=[], allow_multiple=True,
                             tooltip="Empty: the image and mask chosen above")
        self._remove = PushButton(text="Remove selected")
        self._epochs = SpinBox(label="Epochs", value=defaults.epochs, min=1, max=100_000,
                               tooltip="At most this many epochs; Minutes usually ends the run")
        self._lr = LineEdit(label="Learning rate", value=f"{defaults.lr:g}",
                            tooltip="Adam learning rate")
        self._loss = ComboBox(label="Loss", choices=LOSSES, value=defaults.loss,
                              tooltip="eml: the paper's enhanced mixing loss")
        self._batch = SpinBox(label="Batch size", value=defaults.batch_size, min=1, max=256,
                              tooltip="Stacks of slices per training step (smaller: less memory)")
        self._layers = ComboBox(
            label="Train", value=defaults.train_layers,
            choices=[("decoder (quick)" if v == "decoder" else "all layers", v) for v in TRAIN_LAYERS],
            tooltip="decoder: only the decoder learns, the encoder stays as it was (faster steps, "
                    "and the model keeps more of what it knew); all layers: for many cases")
        self._crop = SpinBox(label="Crop size", value=defaults.crop_size or 0, min=0, max=defaults.input_size,
                             step=16, tooltip="Train on windows of this many pixels, centred on "
                                              "the lesion in lesion slices (faster); 0: whole slices")
        self._steps = SpinBox(label="Steps/epoch", value=defaults.steps_per_epoch, min=0, max=100_000,
                              tooltip="Training steps per epoch; 0: as many stacks as the pairs "
                                      "have head slices")
        self._minutes = SpinBox(label="Minutes", value=int(defaults.max_minutes), min=0, max=10_000,
                                tooltip="Stop after this many minutes (0: no limit); the epoch "
                                        "running then ends early and is checked")
        self._freeze_norm = CheckBox(text="Keep normalisation statistics", value=defaults.freeze_norm, tooltip=(
            "Few-case fine-tuning: the BatchNorm layers keep the statistics of the starting "
            "model (a few batches would replace them and break the model)"))
        nilearn = _has_nilearn()
        self._rehearsal = SpinBox(
            label="Rehearsal", value=QUICK_REHEARSAL_PER_CASE, min=0,
            max=10, enabled=nilearn,
            tooltip=f"Synthetic cases per training pair (MNI152 template, real lesion shapes; "
                    f"{MAX_REHEARSAL} at most) trained on beside yours, so that the model forgets less of what "
                    "it knew; needs nilearn (pip install 'napari-dunet[synth]')")
        self._hold_back = SpinBox(
            label="Held back %", value=round(100 * HOLD_BACK), min=10, max=50,
            tooltip="Share of the corrected data kept out of training (slices of each pair; "
                    "whole pairs from 4 pairs on). The starting model is scored on it first and "
                    "after every epoch; the new model is used only if it scores better there")
        self._device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self._out = FileEdit(label="Save to", mode="w", filter="*.safetensors",
                             value=default_output())
        self._start = PushButton(text="Start")
        self._stop = PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=PROGRESS_STEPS)
        self._status = elided_label(label="Status", value="idle")
        # the held-back scores of the start and the fine-tuned model, and which one is in use
        self._result = wrapped_label(label="Held back", value="-")
        self.extend([self._image, self._mask, self._add_pair, self._add_folder, self._pairs,
                     self._remove, self._layers, self._epochs, self._lr, self._loss, self._batch,
                     self._crop, self._steps,
                     self._minutes, self._freeze_norm, self._rehearsal, self._hold_back,
                     self._device,
                     self._out, self._start, self._stop, self._progress, self._status,
                     self._result])
        self._plot = TrainingPlot()
        self.add_native(self._plot.canvas)
        self.fit()

        #: extra ``TrainConfig`` fields (e.g. ``batch_size``, ``input_size``) for scripting
        self.config_overrides: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}  # list entry -> (image, labels) layers or io.Case
        self._runner = JobRunner(self, self._set_running)
        self._job: FinetuneJob | None = None
        self._saved, self._started = False, 0.0
        self._start_dsc: float | None = None  # the starting model's held-back DSC

        self._add_pair.changed.connect(self.add_current_pair)
        self._add_folder.changed.connect(self._folder_clicked)
        self._remove.changed.connect(self._remove_selected)
        self._start.changed.connect(self.start)
        self._stop.changed.connect(self.stop)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._layers_changed)

    # -- choosing pairs --------------------------------------------------------------------
    def _choices(self, kind: type) -> Any:
        return lambda _w=None: [(layer.name, layer) for layer in self._viewer.layers
                                if isinstance(layer, kind)]

    def _layers_changed(self, _event: Any = None) -> None:
        self._image.reset_choices()
        self._mask.reset_choices()

    def _set_sources(self, sources: dict[str, Any]) -> None:
        self._sources = sources
        self._pairs.choices = list(sources)

    def add_current_pair(self) -> None:
        """Add the chosen (Image, Labels) pair to the training pairs."""
        image, labels = self._image.value, self._mask.value
        if image is None or labels is None:
            show_warning("Choose an Image layer and its corrected Labels layer first.")
            return
        self._set_sources({**self._sources, f"{image.name} + {labels.name}": (image, labels)})

    def add_folder(self, folder: str | Path) -> int:
        """Add every labelled case under ``folder``; returns how many were added."""
        from ..training.data import find_training_cases

        try:
            cases = find_training_cases([folder])
        except DunetError as exc:
            show_error(str(exc))
            return 0
        self._set_sources({**self._sources,
                           **{f"{Path(folder).name}/{case.name}": case for case in cases}})
        return len(cases)

    def _folder_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Folder of images with lesion masks")
        if folder:
            self.add_folder(folder)

    def _remove_selected(self) -> None:
        chosen = set(self._pairs.value or [])
        self._set_sources({k: v for k, v in self._sources.items() if k not in chosen})

    def _collect(self) -> FinetuneJob:
        """Check the inputs and copy what a run needs; raises ``DunetError`` with what to fix."""
        sources = dict(self._sources)
        if not sources:
            image, labels = self._image.value, self._mask.value
            if image is None or labels is None:
                raise InputError("Choose an Image layer and its corrected Labels layer (or add "
                                 "training pairs) first.")
            sources = {f"{image.name} + {labels.name}": (image, labels)}
        pairs: list[CorrectedCase | Case] = []
        for name, source in sources.items():
            if isinstance(source, Case):
                pairs.append(source)
                continue
            image, labels = source
            if image not in self._viewer.layers or labels not in self._viewer.layers:
                raise InputError(f"A layer of the pair '{name}' was closed; remove the pair.")
            if image.ndim != 3 or image.rgb:
                raise InputError(f"'{image.name}' is not a 3D single-channel image.")
            volume = layer_volume(image.data, image.metadata, same_grid_kwargs(image))
            pairs.append(CorrectedCase(name, volume,
                                       (np.asarray(labels.data) > 0).astype(np.uint8)))
        try:
            lr = float(self._lr.value)
        except ValueError:
            raise InputError(f"The learning rate {self._lr.value!r} is not a number.") from None
        config = TrainConfig(**{
            "epochs": int(self._epochs.value), "lr": lr, "loss": self._loss.value,
            "device": self._device.value, "batch_size": int(self._batch.value),
            "steps_per_epoch": int(self._steps.value) or None,
            "train_layers": self._layers.value, "crop_size": int(self._crop.value) or None,
            "max_minutes": float(self._minutes.value) or None,
            "freeze_norm": bool(self._freeze_norm.value),
            "val_batch_size": QUICK["val_batch_size"], **self.config_overrides})
        config.check()
        out = Path(self._out.value)
        if out.suffix != ".safetensors":
            raise InputError(f"Save to a .safetensors file, not '{out.name}'.")
        init = model_store.current_checkpoint()
        notes = [] if init is not None else [
            "No weights are loaded, so a new model is trained from scratch."]
        if len(pairs) == 1:
            notes.append(ONE_PAIR_NOTE)
        rehearsal = rehearsal_count(len(pairs), int(self._rehearsal.value))
        return FinetuneJob(pairs, config, out, init, self._hold_back.value / 100, rehearsal,
                           notes)

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start fine-tuning in a worker thread (inputs are checked first)."""
        if self._runner.worker is not None:
            return
        try:
            job = self._collect()
        except DunetError as exc:
            show_warning(str(exc))
            return
        for note in job.notes:
            show_info(note)
        self._job, self._saved, self._started = job, False, time.monotonic()
        self._start_dsc = None
        self._result.value = "-"
        self._plot.clear(validation=True)
        self._runner.start(finetune_events, job, yielded=self._on_event,
                           returned=self._on_finished, aborted=lambda: self._on_finished(None),
                           errored=self._on_error)
        self._status.value = "preparing the training pairs"

    def stop(self) -> None:
        """Stop (within a step); a saved model that beat the starting one is kept."""
        self._runner.stop()
        self._stop.enabled = False
        self._status.value = "stopping"

    def _set_running(self, running: bool) -> None:
        self._start.enabled = not running
        self._stop.enabled = running
        if running:
            self._progress.value = 0

    def _on_event(self, event: Any) -> None:
        from ..training.engine import EpochMetrics, StartScore, StepProgress

        if isinstance(event, Preparing):
            self._status.value = f"prepared {event.done} of {event.total} cases"
        elif isinstance(event, StartScore):
            self._start_dsc = event.val_dsc
            self._plot.add_epoch(0, float("nan"), event.val_dsc)
            self._status.value = "training"
            self._result.value = f"DSC {event.val_dsc:.3f} at the start"
        elif isinstance(event, StepProgress):
            fraction = event.done / max(event.total, 1)
            minutes = self._job.config.max_minutes if self._job is not None else None
            if minutes:  # a timed run: the share of its time used, if that is more
                fraction = max(fraction, (time.monotonic() - self._started) / (60 * minutes))
            self._progress.value = round(PROGRESS_STEPS * min(fraction, 1.0))
            self._status.value = f"epoch {event.epoch}, step {event.step} of {event.steps}"
            self._plot.add_step(event.epoch - 1 + event.step / event.steps, event.loss)
        elif isinstance(event, EpochMetrics):
            self._saved = self._saved or event.saved
            self._plot.add_epoch(event.epoch, event.train_loss, event.val_dsc)
            dsc = "" if event.val_dsc is None else f", held-back DSC {event.val_dsc:.3f}"
            self._status.value = f"epoch {event.epoch}: loss {event.train_loss:.3f}{dsc}"
            if event.val_dsc is not None:
                start = ("" if self._start_dsc is None
                         else f"DSC {self._start_dsc:.3f} at the start, ")
                self._result.value = f"{start}epoch {event.epoch}: {event.val_dsc:.3f}"

    def _on_finished(self, result: Any) -> None:
        """Hand a model that beat the starting one to "Segment lesion" (and get a fresh file
        name for the next run), or say that the starting model stays."""
        job = self._job
        checkpoint = result.checkpoint if result is not None else (
            job.out if self._saved and job.out.is_file() else None)
        message = result.message if result is not None else "Fine-tuning stopped."
        best = result.best_val_dsc if result is not None else None
        start = self._start_dsc
        self._status.value = message  # elided; the whole of it in the tooltip
        if checkpoint is not None:
            model_store.set_checkpoint(checkpoint)
            self._out.value = default_output()
            scores = (f"DSC {start:.3f} -> {best:.3f}: " if None not in (start, best) else "")
            self._result.value = f"{scores}'Segment lesion' now uses {checkpoint.name}"
            show_info(f"{message} 'Segment lesion' now uses {checkpoint.name}.")
            return
        if start is not None:
            tried = [m.val_dsc for m in (result.history if result is not None else [])
                     if m.val_dsc is not None]
            after = f", fine-tuned {max(tried):.3f} at best" if tried else ""
            self._result.value = f"DSC {start:.3f} at the start{after}: the starting model is kept"
        show_info(message)

    def _on_error(self, exc: Exception) -> None:
        kind, text = failure(exc, "Fine-tuning", "Not enough memory to fine-tune; lower the "
                             "batch size or use fewer pairs.", "Fine-tuning stopped.")
        self._status.value = "failed" if kind == "error" else text
        (show_info if kind == "info" else show_error)(text)


def default_output() -> Path:
    """A new file name for a fine-tuned model, e.g. ``~/napari-dunet/models/finetuned-<time>``."""
    return MODEL_FOLDER / f"finetuned-{datetime.now():%Y%m%d-%H%M%S}.safetensors"


class TrainingPlot:
    """Live plot: loss per step (faint), mean loss per epoch and validation DSC (right axis)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.loss_axes = self.figure.add_subplot()
        self.dsc_axes = self.loss_axes.twinx()
        self.steps: tuple[list[float], list[float]] = ([], [])
        self.epochs: tuple[list[int], list[float], list[float | None]] = ([], [], [])
        self.clear()

    def clear(self, validation: bool = False) -> None:
        self.steps = ([], [])
        self.epochs = ([], [], [])
        self.validation = validation
        self.draw()

    def add_step(self, position: float, loss: float) -> None:
        self.steps[0].append(position)
        self.steps[1].append(loss)
        count = len(self.steps[0])
        if count <= 5 or count % 5 == 0:  # the first steps at once, then now and then
            self.draw()

    def add_epoch(self, epoch: int, loss: float, val_dsc: float | None) -> None:
        self.epochs[0].append(epoch)
        self.epochs[1].append(loss)
        self.epochs[2].append(val_dsc)
        self.draw()

    def draw(self) -> None:
        loss, dsc = self.loss_axes, self.dsc_axes
        loss.clear()
        dsc.clear()
        loss.plot(*self.steps, ".-" if len(self.steps[0]) < 20 else "-", color="tab:blue",
                  alpha=0.4, linewidth=0.8, markersize=4)  # a few steps: each one visible
        loss.plot(self.epochs[0], self.epochs[1], "o-", color="tab:blue", label="training loss")
        loss.set_xlabel("epoch")
        loss.set_ylabel("loss", color="tab:blue")
        dsc.set_ylim(0, 1)
        dsc.yaxis.set_label_position("right")
        if self.validation:
            points = [(e, d) for e, d in zip(self.epochs[0], self.epochs[2]) if d is not None]
            dsc.plot([p[0] for p in points], [p[1] for p in points], "s-", color="tab:red")
            dsc.set_ylabel("held-back DSC", color="tab:red")
        else:
            dsc.set_yticks([])
        self.canvas.draw()
