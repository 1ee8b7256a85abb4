"""The "Evaluate" dock widget: score a lesion mask against a reference tracing.

Prediction and reference are Labels layers or NIfTI files. The widget shows the metrics of the
last case, keeps the cases evaluated in this session with mean +- SD and median, and exports
them as CSV. All science is in ``napari_dunet.metrics`` / ``napari_dunet.evaluation``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, PushButton, Table
from napari.utils.notifications import show_error, show_info, show_warning

from ..errors import DunetError, InputError
from ..evaluation import (CaseResult, evaluate_arrays, load_mask_files, summarize, write_csv)
from ..io import case_name
from ..layers import native_volume, same_grid_kwargs
from .layout import Panel, elided_label

FROM_FILE = "(NIfTI file)"
#: (row title, CaseResult.row() key) of the metrics table.
METRICS = (("DSC", "dsc"), ("Precision", "precision"), ("Recall", "recall"),
           ("Lesion-wise F1", "lesion_f1"), ("HD95 (mm)", "hd95_mm"),
           ("Prediction volume (mL)", "pred_ml"), ("Reference volume (mL)", "truth_ml"),
           ("Volume difference (mm3)", "volume_diff_mm3"),
           ("Volume difference (voxels)", "volume_diff_voxels"),
           ("Lesion count difference", "lesion_count_diff"))
#: Columns of the session table (keys summarised by ``evaluation.summarize``).
SESSION_COLUMNS = (("DSC", "dsc"), ("Precision", "precision"), ("Recall", "recall"),
                   ("Lesion F1", "lesion_f1"), ("HD95 mm", "hd95_mm"),
                   ("|dV| mm3", "volume_diff_mm3"), ("|dN|", "lesion_count_diff"))


def _cell(value: Any) -> Any:
    """A table cell: numbers as they are (the table shows 4 decimals), ``inf``, ``-`` if undefined."""
    if isinstance(value, float) and not math.isfinite(value):
        return "-" if math.isnan(value) else "inf"
    return value


def _mean_sd(mean: float, sd: float) -> str:
    return "-" if math.isnan(mean) else f"{mean:.4f}" + ("" if math.isnan(sd) else f" \u00b1 {sd:.4f}")


def show_every_row(table: Any) -> None:
    """Size a QTableWidget's columns to their contents and its height to all of its rows (the
    panel scrolls, the table does not)."""
    table.resizeColumnsToContents()
    rows = sum(table.rowHeight(r) for r in range(table.rowCount()))
    scroll_bar = table.horizontalScrollBar().sizeHint().height()
    table.setMinimumHeight(table.horizontalHeader().height() + rows + scroll_bar
                           + 2 * table.frameWidth())


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
        self.case_table = Table(value={"data": [], "index": [], "columns": ["value"]},
                                label="Last case")
        self.session_table = Table(value={"data": [], "index": [], "columns": []},
                                   label="This session")
        self._clear = PushButton(text="Clear list")
        self._csv = FileEdit(label="CSV file", mode="w", filter="*.csv")
        self._export = PushButton(text="Export CSV")
        for table in (self.case_table, self.session_table):
            table.read_only = True
        self.extend([self._pred, self._pred_file, self._truth, self._truth_file,
                     self._connectivity, self._voxelwise, self._evaluate, self._status, self.case_table,
                     self.session_table, self._clear, self._csv, self._export])
        self.fit()

        self.results: list[CaseResult] = []
        self._pred.changed.connect(self._toggle_files)
        self._truth.changed.connect(self._toggle_files)
        self._evaluate.changed.connect(self.evaluate)
        self._clear.changed.connect(self.clear)
        self._export.changed.connect(self._export_clicked)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._layers_changed()

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

    def _mask(self, choice: Any, file: FileEdit, role: str
              ) -> tuple[np.ndarray, np.ndarray, str, str, list[str]]:
        """(mask, affine, description, case name, notes) of a layer or file choice."""
        if choice == FROM_FILE:
            path = Path(file.value)
            if not str(file.value) or str(file.value) == "." or not path.is_file():
                raise InputError(f"Choose the {role} NIfTI file.")
            data, affine, notes = load_mask_files([path])
            return data, affine, f"{role} {path.name}", case_name(path), notes
        if choice is None:
            raise InputError(f"Choose the {role}: a Labels layer or {FROM_FILE}.")
        try:
            volume = native_volume(choice.data, choice.metadata, same_grid_kwargs(choice))
        except InputError as exc:
            raise InputError(f"{role} layer {choice.name!r}: {exc}.") from exc
        path = choice.metadata.get("path") if choice.metadata else None
        return (volume.data, volume.affine, f"{role} layer {choice.name!r}",
                case_name(path) if path else choice.name, [])

    # -- actions ---------------------------------------------------------------------------
    def evaluate(self, _value: Any = None) -> CaseResult | None:
        """Score the chosen prediction against the chosen reference; errors are shown, not raised."""
        try:
            pred, pred_affine, pred_label, _, pred_notes = self._mask(
                self._pred.value, self._pred_file, "prediction")
            truth, truth_affine, truth_label, name, truth_notes = self._mask(
                self._truth.value, self._truth_file, "reference")
            if self._pred.value is self._truth.value and self._pred.value != FROM_FILE:
                raise InputError("The prediction and the reference are the same layer.")
            # one session row per prediction: the raw and the corrected mask of a case side by side
            source = (Path(self._pred_file.value).name if self._pred.value == FROM_FILE
                      else self._pred.value.name)
            result = evaluate_arrays(pred, truth, name=f"{name} ({source})",
                                     pred_affine=pred_affine, truth_affine=truth_affine,
                                     connectivity=self._connectivity.value,
                                     voxelwise=self._voxelwise.value, pred_label=pred_label,
                                     truth_label=truth_label)
        except DunetError as exc:
            self._status.value = str(exc)
            show_error(str(exc))
            return None
        result.notes[:0] = pred_notes + truth_notes
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
        return result

    def clear(self, _value: Any = None) -> None:
        self.results.clear()
        self.case_table.value = {"data": [], "index": [], "columns": ["value"]}
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
        self.case_table.value = {"data": [[_cell(row[key])] for _, key in METRICS],
                                 "index": [title for title, _ in METRICS],
                                 "columns": [result.case]}
        self._refresh_session()

    def _refresh_session(self) -> None:
        rows = [r.row() for r in self.results]
        data = [[_cell(row[key]) for _, key in SESSION_COLUMNS] for row in rows]
        index = [row["case"] for row in rows]
        if rows:
            s = summarize(self.results)
            data.append([_mean_sd(s[f"{key}_mean"], s[f"{key}_sd"]) for _, key in SESSION_COLUMNS])
            data.append([_cell(s[f"{key}_median"]) for _, key in SESSION_COLUMNS])
            data.append([s["dsc_global"]] + [""] * (len(SESSION_COLUMNS) - 1))
            index += ["mean \u00b1 SD", "median", "global DSC"]
        self.session_table.value = {"data": data, "index": index,
                                    "columns": [title for title, _ in SESSION_COLUMNS]}
        for table in (self.case_table, self.session_table):
            show_every_row(table.native)
