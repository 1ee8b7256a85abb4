"""The "Evaluate" dock widget: score a lesion mask against a reference tracing.

Prediction and reference are Labels layers or NIfTI files. The widget shows the metrics of the
last case (values first, so that a narrow dock shows them), keeps the cases evaluated in this
session with mean +- SD and median, and exports them as CSV. A case is scored in a thread
worker (the viewer stays responsive). All science is in ``napari_dunet.metrics`` /
``napari_dunet.evaluation``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, Table
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QHeaderView

from ..errors import DunetError, InputError
from ..evaluation import (CaseResult, evaluate_arrays, load_mask_files, summarize, write_csv)
from ..io import case_name
from ..layers import native_volume, same_grid_kwargs
from .layout import Panel, elided_label, full_width
from .runner import JobRunner, failure

FROM_FILE = "(NIfTI file)"
#: (row title, CaseResult.row() key) of the metrics table.
METRICS = (("DSC", "dsc"), ("Precision", "precision"), ("Recall", "recall"),
           ("Lesion-wise F1", "lesion_f1"), ("HD95 (mm)", "hd95_mm"),
           ("Prediction volume (mL)", "pred_ml"), ("Reference volume (mL)", "truth_ml"),
           ("Volume difference (mm3)", "volume_diff_mm3"),
           ("Volume difference (voxels)", "volume_diff_voxels"),
           ("Lesion count difference", "lesion_count_diff"))
#: Columns of the session table (keys summarised by ``evaluation.summarize``); the case last.
SESSION_COLUMNS = (("DSC", "dsc"), ("Precision", "precision"), ("Recall", "recall"),
                   ("Lesion F1", "lesion_f1"), ("HD95 mm", "hd95_mm"),
                   ("|dV| mm3", "volume_diff_mm3"), ("|dN|", "lesion_count_diff"))
CASE_COLUMNS = ("Value", "Metric")


def _cell(value: Any) -> str:
    """A table cell: whole numbers as integers, others with 4 decimals (1000 and more: none),
    ``inf``, ``-`` if undefined."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if not math.isfinite(value):
        return "-" if math.isnan(value) else "inf"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"


def _mean_sd(mean: float, sd: float) -> str:
    return "-" if math.isnan(mean) else f"{mean:.4f}" + ("" if math.isnan(sd) else f" \u00b1 {sd:.4f}")


def fit_table(table: Any, stretch_last: bool) -> None:
    """Lay out a QTableWidget whose first columns hold the values: no row titles, columns as
    wide as their text (``stretch_last``: the last one takes the rest of the width, its text
    elided; else the table scrolls sideways), and its height all of its rows (the panel
    scrolls, the table does not)."""
    table.verticalHeader().setVisible(False)
    header = table.horizontalHeader()
    for column in range(table.columnCount()):
        stretch = stretch_last and column == table.columnCount() - 1
        header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch if stretch
                                    else QHeaderView.ResizeMode.ResizeToContents)
    rows = sum(table.rowHeight(r) for r in range(table.rowCount()))
    scroll_bar = table.horizontalScrollBar().sizeHint().height()
    table.setMinimumHeight(header.height() + rows + scroll_bar + 2 * table.frameWidth())


#: a mask to score, collected in the GUI thread: a NIfTI file, or (a copy of a Labels layer's
#: data, its metadata, its transform, its name)
MaskSource = Path | tuple[np.ndarray, dict, dict, str]


def load_mask(source: MaskSource, role: str) -> tuple[np.ndarray, np.ndarray, str, str, list[str]]:
    """(mask, affine, description, case name, notes) of a layer or file (Qt-free)."""
    if isinstance(source, Path):
        data, affine, notes = load_mask_files([source])
        return data, affine, f"{role} {source.name}", case_name(source), notes
    data, metadata, transform, name = source
    try:
        volume = native_volume(data, metadata, transform)
    except InputError as exc:
        raise InputError(f"{role} layer {name!r}: {exc}.") from exc
    path = metadata.get("path") if metadata else None
    return volume.data, volume.affine, f"{role} layer {name!r}", case_name(path) if path else name, []


def score(pred: MaskSource, truth: MaskSource, connectivity: int, voxelwise: bool,
          cancel: Callable[[], bool] | None = None) -> CaseResult:
    """The metrics of ``pred`` against ``truth``, named ``<case> (<prediction>)`` so that the
    raw and the corrected mask of a case get a row each (runs in the worker thread)."""
    pred_mask, pred_affine, pred_label, _, pred_notes = load_mask(pred, "prediction")
    truth_mask, truth_affine, truth_label, name, truth_notes = load_mask(truth, "reference")
    source = pred.name if isinstance(pred, Path) else pred[3]
    result = evaluate_arrays(pred_mask, truth_mask, name=f"{name} ({source})",
                             pred_affine=pred_affine, truth_affine=truth_affine,
                             connectivity=connectivity, voxelwise=voxelwise,
                             pred_label=pred_label, truth_label=truth_label)
    result.notes[:0] = pred_notes + truth_notes
    return result


class EvaluateWidget(Panel):
    """Compare a predicted lesion mask with a reference mask (Labels layers or NIfTI files)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self._pred = ComboBox(label="Prediction", choices=self._choices,
                              tooltip="The mask to score: a Labels layer or a NIfTI file")
        self._pred_file = FileEdit(label="Prediction file", mode="r", filter="*.nii *.nii.gz",
                                   visible=False)
        self._truth = ComboBox(label="Reference", choices=self._choices,
                               tooltip="The manual tracing: a Labels layer or a NIfTI file")
        self._truth_file = FileEdit(label="Reference file", mode="r", filter="*.nii *.nii.gz",
                                    visible=False)
        self._connectivity = ComboBox(label="Lesions", value=6, choices=[
            ("6-connected (ATLAS)", 6), ("26-connected (ISLES'22)", 26)],
            tooltip="Voxel neighbourhood that joins voxels into one lesion (lesion count, F1)")
        self._voxelwise = CheckBox(text="Compare voxel arrays", value=False, tooltip=(
            "Score masks whose affines differ voxel by voxel (otherwise an error: they are not "
            "on the same grid in world space)"))
        self._evaluate = PushButton(text="Evaluate")
        self._status = elided_label(value="")
        titles = Label(value="Last case"), Label(value="This session")
        self.case_table = Table(value={"data": [], "index": [], "columns": CASE_COLUMNS})
        self.session_table = Table(value={"data": [], "index": [], "columns": []})
        self._clear = PushButton(text="Clear list")
        self._csv = FileEdit(label="CSV file", mode="w", filter="*.csv")
        self._export = PushButton(text="Export CSV")
        for table in (self.case_table, self.session_table):
            table.read_only = True
        self.extend([self._pred, self._pred_file, self._truth, self._truth_file,
                     self._connectivity, self._voxelwise, self._evaluate, self._status, titles[0],
                     self.case_table, titles[1], self.session_table, self._clear, self._csv,
                     self._export])
        full_width(self._status, *titles, self.case_table, self.session_table)
        self.fit()

        self.results: list[CaseResult] = []
        self.last_result: CaseResult | None = None  # the latest evaluation's (None: it failed)
        self._runner = JobRunner(self, self._set_running)
        self._pred.changed.connect(self._toggle_files)
        self._truth.changed.connect(self._toggle_files)
        self._evaluate.changed.connect(self.evaluate)
        self._clear.changed.connect(self.clear)
        self._export.changed.connect(self._export_clicked)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._layers_changed()
        self._refresh_session()

    # -- inputs ----------------------------------------------------------------------------
    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        labels = [(layer.name, layer) for layer in self._viewer.layers
                  if isinstance(layer, napari.layers.Labels)]
        return labels + [(FROM_FILE, FROM_FILE)]

    def _layers_changed(self, _event: Any = None) -> None:
        self._pred.reset_choices()
        self._truth.reset_choices()
        layers = [v for _, v in self._choices() if not isinstance(v, str)]
        if len(layers) >= 2 and self._pred.value is self._truth.value:
            self._pred.value, self._truth.value = layers[-1], layers[0]
        self._toggle_files()

    def _toggle_files(self, _value: Any = None) -> None:
        self._pred_file.visible = self._pred.value == FROM_FILE
        self._truth_file.visible = self._truth.value == FROM_FILE

    def _source(self, choice: Any, file: FileEdit, role: str) -> MaskSource:
        """What to score of a layer or file choice (a layer's data copied: painting goes on)."""
        if choice == FROM_FILE:
            path = Path(file.value)
            if not str(file.value) or str(file.value) == "." or not path.is_file():
                raise InputError(f"Choose the {role} NIfTI file.")
            return path
        if choice is None:
            raise InputError(f"Choose the {role}: a Labels layer or {FROM_FILE}.")
        return (np.array(choice.data), dict(choice.metadata), same_grid_kwargs(choice),
                choice.name)

    # -- actions ---------------------------------------------------------------------------
    def evaluate(self, _value: Any = None) -> bool:
        """Start scoring the chosen prediction against the chosen reference in a worker; the
        result goes to the tables and ``last_result``; errors are shown, not raised. False when
        it could not start."""
        if self._runner.worker is not None:
            return False
        self.last_result = None
        try:
            if self._pred.value is self._truth.value and self._pred.value != FROM_FILE:
                raise InputError("The prediction and the reference are the same layer.")
            pred = self._source(self._pred.value, self._pred_file, "prediction")
            truth = self._source(self._truth.value, self._truth_file, "reference")
        except DunetError as exc:
            self._failed(exc)
            return False
        self._status.value = "Evaluating..."
        return self._runner.start(score, pred, truth, self._connectivity.value,
                                  self._voxelwise.value, returned=self._scored,
                                  errored=self._failed)

    def _set_running(self, running: bool) -> None:
        self._evaluate.enabled = not running

    def _failed(self, exc: Exception) -> None:
        _, text = failure(exc, "Evaluation", "Not enough memory to compare these masks.")
        self._status.value = text
        show_error(text)

    def _scored(self, result: CaseResult) -> None:
        self.last_result = result
        replaced = [i for i, r in enumerate(self.results) if r.case == result.case]
        if replaced:
            self.results[replaced[0]] = result
        else:
            self.results.append(result)
        self._show(result)
        for note in result.notes:
            show_warning(note)
        self._status.value = "\n".join(result.notes) or (
            f"{result.case}: DSC {result.metrics.dsc:.3f}"
            + (" (replaces the earlier result)" if replaced else ""))

    def clear(self, _value: Any = None) -> None:
        self.results.clear()
        self.case_table.value = {"data": [], "index": [], "columns": CASE_COLUMNS}
        self._refresh_session()
        self._status.value = ""

    def export_csv(self, path: str | Path) -> Path | None:
        """Write the session's cases and summary; an existing file is never replaced."""
        try:
            if not self.results:
                raise InputError("Nothing to export yet: evaluate a case first.")
            written = write_csv(self.results, path)
        except DunetError as exc:
            self._status.value = str(exc)
            show_error(str(exc))
            return None
        self._status.value = f"Saved {written}"
        show_info(f"Saved {written}")
        return written

    def _export_clicked(self, _value: Any = None) -> None:
        value = str(self._csv.value)
        if not value or value == ".":
            self._status.value = "Choose a CSV file name first."
            return
        self.export_csv(value if value.lower().endswith(".csv") else value + ".csv")

    # -- display ---------------------------------------------------------------------------
    def _show(self, result: CaseResult) -> None:
        row = result.row()
        titles = [title for title, _ in METRICS]
        self.case_table.value = {"data": [[_cell(row[key]), title] for title, key in METRICS],
                                 "index": titles, "columns": CASE_COLUMNS}
        self._refresh_session()

    def _refresh_session(self) -> None:
        rows = [r.row() for r in self.results]
        data = [[_cell(row[key]) for _, key in SESSION_COLUMNS] for row in rows]
        index = [row["case"] for row in rows]
        if rows:
            s = summarize(self.results)
            data.append([_mean_sd(s[f"{key}_mean"], s[f"{key}_sd"]) for _, key in SESSION_COLUMNS])
            data.append([_cell(s[f"{key}_median"]) for _, key in SESSION_COLUMNS])
            data.append([_cell(s["dsc_global"])] + [""] * (len(SESSION_COLUMNS) - 1))
            index += ["mean \u00b1 SD", "median", "global DSC"]
        self.session_table.value = {"data": [cells + [case] for cells, case in zip(data, index)],
                                    "index": index,
                                    "columns": [title for title, _ in SESSION_COLUMNS] + ["Case"]}
        fit_table(self.case_table.native, stretch_last=True)
        fit_table(self.session_table.native, stretch_last=False)
