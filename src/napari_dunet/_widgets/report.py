"""The "Report" rows of the Segment lesion panel: a lesion mask normalised to MNI152 2009a, with
each lesion's volume, side and regions, written beside the scan (``napari_dunet.report``, which
``dunet report`` runs headless). The registration runs in a thread worker; Stop answers within
one optimiser iteration. The scan's transform is kept, so reporting a corrected mask of the same
scan again takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import napari
from magicgui.widgets import ComboBox, PushButton
from napari.utils.notifications import show_error, show_info, show_warning
from superqt.utils import ensure_main_thread

from ..errors import DunetError, InputError
from ..io import Volume, case_name
from ..layers import layer_transform, layer_volume
from .layout import Panel, wrapped_label
from .runner import JobRunner, failure


@dataclass
class ReportJob:
    """What a report needs, collected in the GUI thread (no napari objects)."""

    scan: Volume
    mask: Volume
    folder: Path
    name: str
    overwrite: bool = False
    transform: Any = None  # the scan's ``MniTransform`` from an earlier report
    mask_label: str | None = None  # how the report names the mask


def report_job(job: ReportJob, progress: Callable[[str], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> tuple[Any, dict[str, Path]]:
    """``report.report_case`` of a job (Qt-free; runs in the worker thread)."""
    from ..report import report_case

    return report_case(job.scan, job.mask, job.folder, job.name, overwrite=job.overwrite,
                       transform=job.transform, progress=progress, cancel=cancel,
                       mask_label=job.mask_label)


def panel_text(summary: dict, markdown: Path) -> str:
    """The report in a few lines: totals, the largest lesions' main regions, the quality."""
    count = summary["lesion_count"]
    lines = [f"{count} lesion{'s' if count != 1 else ''}, {summary['total_native_ml']:.2f} mL "
             f"({summary['total_mni_ml']:.2f} mL in MNI), {summary['hemisphere']}"]
    for item in summary["lesions"][:3]:
        regions = ", ".join(f"{r['region']} {r['percent']:.0f} %" for r in item["regions"][:2])
        lines.append(f"{item['number']}: {item['native_ml']:.2f} mL, {regions}")
    if count > 3:
        lines.append(f"... {count - 3} more in the report")
    reg = summary["registration"]
    lines.append(f"registration: correlation {reg['template_correlation']:.2f} ({reg['quality']})")
    lines.append(f"written: {markdown}")
    return "\n".join(lines)


class ReportSection:
    """The mask to report, "Write MNI report...", Stop, and the result, added to ``panel``;
    ``image()`` gives the panel's current Image layer."""

    def __init__(self, panel: Panel, viewer: napari.viewer.Viewer, image: Callable[[], Any]):
        self._panel, self._viewer, self._image = panel, viewer, image
        self._mask = ComboBox(label="Mask", choices=self._mask_choices,
                              tooltip="The lesion mask (Labels layer on the image's grid) to "
                                      "report in MNI space")
        self._write = PushButton(text="Write MNI report...", tooltip=(
            "Register the image to MNI152 2009a (the lesion left out of the cost) and write each "
            "lesion's volume, side and regions, with the normalised scan and mask (about 2-5 "
            "minutes on a laptop; needs the report extra)"))
        self._stop = PushButton(text="Stop report", enabled=False)
        self._status = wrapped_label(label="Report", value="-")
        panel.extend([self._mask, self._write, self._stop, self._status])
        self._runner = JobRunner(panel, self._set_running)
        self._running: tuple[Any, ReportJob] | None = None
        self._transforms: dict[Any, Any] = {}  # image layer -> its MniTransform
        self._write.changed.connect(self._write_clicked)
        self._stop.changed.connect(self.stop)
        events = viewer.layers.events
        self._events = (events.inserted, events.removed)
        for event in self._events:
            event.connect(self._layers_changed)
        panel.native.destroyed.connect(self._closed)

    # -- inputs ----------------------------------------------------------------------------
    def _mask_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, napari.layers.Labels) and layer.ndim == 3]

    def _layers_changed(self, event: Any) -> None:
        """Refresh the masks; a mask just added (a new segmentation) becomes the one chosen."""
        self._mask.reset_choices()
        if event.type == "inserted" and event.value in self._mask.choices:
            self._mask.value = event.value
        if event.type == "removed":
            self._transforms.pop(event.value, None)

    def _closed(self, *_: Any) -> None:
        for event in self._events:
            event.disconnect(self._layers_changed)

    def job(self, folder: str | Path) -> ReportJob:
        """Check the inputs and collect the report of the chosen mask into ``folder``."""
        from ..registration import require_packages

        image, labels = self._image(), self._mask.value
        if image is None or labels is None:
            raise InputError("Choose an Image and a lesion mask (a Labels layer: segment the "
                             "image first) to report.")
        require_packages()
        scan = layer_volume(image.data, image.metadata, layer_transform(image))
        mask = layer_volume(labels.data, labels.metadata, layer_transform(labels))
        if mask.data.shape != scan.data.shape:
            raise InputError(f"'{labels.name}' ({mask.data.shape}) is not on the grid of "
                             f"'{image.name}' ({scan.data.shape}); choose the mask drawn on it.")
        path = image.metadata.get("path")
        name = case_name(path) if path else image.name.replace(" ", "_")
        return ReportJob(scan, Volume((mask.data > 0).astype("uint8"), mask.affine),
                         Path(folder), name, transform=self._transforms.get(image),
                         mask_label=f"napari layer '{labels.name}'")

    # -- running ---------------------------------------------------------------------------
    def _write_clicked(self) -> None:
        from qtpy.QtWidgets import QFileDialog, QMessageBox

        from ..report import output_paths
        from .segment import save_folder

        image = self._image()
        start = save_folder(image.metadata.get("path") if image is not None else None)
        folder = QFileDialog.getExistingDirectory(self._panel.native, "Folder for the report",
                                                  str(start))
        if not folder:
            return
        try:
            job = self.job(folder)
        except DunetError as exc:
            show_warning(str(exc))
            return
        existing = [p for p in output_paths(folder, job.name).values() if p.exists()]
        if existing:
            answer = QMessageBox.question(
                self._panel.native, "Replace the report?",
                f"{existing[0].name} and the rest of {job.name}'s report exist in {folder}. "
                "Replace them?")
            if answer != QMessageBox.StandardButton.Yes:
                return
            job.overwrite = True
        self.start(job)

    def start(self, job: ReportJob) -> None:
        """Run ``job`` in a worker thread (nothing when a report is running)."""
        self._running = (self._image(), job)
        self._status.value = "registering to MNI152 2009a..."
        self._runner.start(report_job, job, progress=ensure_main_thread(self._progress),
                           returned=self._finished, errored=self._failed)

    def stop(self) -> None:
        """Stop the running report (within one optimiser iteration); nothing is written."""
        if self._runner.worker is not None:
            self._runner.stop()
            self._stop.enabled = False
            self._status.value = "stopping..."

    def _set_running(self, running: bool) -> None:
        self._write.enabled = not running
        self._stop.enabled = running

    def _progress(self, message: str) -> None:
        if self._runner.alive and not self._runner.stop_requested.is_set():
            self._status.value = message

    def _failed(self, exc: Exception) -> None:
        kind, text = failure(exc, "The report", "Not enough memory to register this scan.",
                             "Report stopped; nothing was written.")
        self._status.value = text
        (show_info if kind == "info" else show_error)(text)

    def _finished(self, outcome: tuple[Any, dict[str, Path]]) -> None:
        (image, _), (report, paths) = self._running, outcome
        self._transforms[image] = report.transform
        self._status.value = panel_text(report.summary, paths["markdown"])
        for warning in report.warnings:
            show_warning(warning)
