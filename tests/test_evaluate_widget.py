"""The "Evaluate" widget in a real napari viewer (run under Xvfb)."""

from __future__ import annotations

import csv
import subprocess
import sys

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest

from napari_dunet._widgets import evaluate as evaluate_module
from napari_dunet._widgets.evaluate import FROM_FILE, EvaluateWidget
from napari_dunet.evaluation import csv_text, evaluate_files
from napari_dunet.metrics import compare_masks


def cube(shape=(12, 12, 8), lo=2, hi=7, shift=0):
    mask = np.zeros(shape, np.uint8)
    mask[lo + shift:hi + shift, lo:hi, 2:5] = 1
    return mask


@pytest.fixture
def shown(monkeypatch):
    """Messages the widget shows the user, by kind."""
    messages = {"info": [], "warning": [], "error": []}
    for kind in messages:
        monkeypatch.setattr(evaluate_module, f"show_{kind}", messages[kind].append)
    return messages


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    w = EvaluateWidget(viewer)
    viewer.window.add_dock_widget(w, name="Evaluate")
    return viewer, w


def table_dict(table):
    """{row title: [cells]} of a magicgui Table."""
    return dict(zip(table.row_headers, table.data.to_list()))


def evaluated(qtbot, w):
    """Click Evaluate and wait for the worker: the result, or None when it failed."""
    if w.evaluate():
        qtbot.waitUntil(lambda: w._runner.worker is None, timeout=30_000)
    return w.last_result


def save_in_orientation(path, mask, codes, zooms=(1.0, 1.0, 3.0)):
    """Save a RAS-ordered mask in the voxel order ``codes`` (e.g. 'LPS') with the right affine."""
    affine = np.diag([*zooms, 1.0])
    transform = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(codes))
    data = nio.apply_orientation(mask, transform)
    affine = affine @ nio.inv_ornt_aff(transform, mask.shape)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), path)
    return path


def test_two_labels_layers_give_the_metrics_table(qtbot, widget, shown):
    viewer, w = widget
    truth, pred = cube(), cube(shift=1)
    viewer.add_labels(truth, name="tracing", scale=(1, 1, 3))
    viewer.add_labels(pred, name="network", scale=(1, 1, 3))
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    result = evaluated(qtbot, w)
    expected = compare_masks(pred, truth, spacing=(1, 1, 3))
    assert result.metrics.dsc == pytest.approx(expected.dsc)
    assert result.metrics.hd95_mm == pytest.approx(expected.hd95_mm)
    table = table_dict(w.case_table)  # values first, then what they are
    assert table["DSC"] == [f"{expected.dsc:.4f}", "DSC"]
    assert table["HD95 (mm)"] == [f"{expected.hd95_mm:.4f}", "HD95 (mm)"]
    assert table["Reference volume (mL)"][0] == f"{truth.sum() * 3 / 1000:.4f}"
    assert table["Volume difference (voxels)"][0] == "0"
    assert w.case_table.column_headers == ("Value", "Metric")
    assert w._status.value.startswith("tracing (network): DSC")
    assert shown["error"] == [] and shown["warning"] == []


def test_counts_print_as_integers_and_the_work_runs_off_the_gui_thread(
        qtbot, widget, monkeypatch):
    import threading

    viewer, w = widget
    truth = np.zeros((60, 60, 40), np.uint8)
    truth[:50, :50, :40] = 1  # 100,000 voxels
    pred = truth.copy()
    pred[:, :, 39] = 0
    viewer.add_labels(truth, name="tracing", scale=(1, 1, 3))
    viewer.add_labels(pred, name="network", scale=(1, 1, 3))
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    threads = []
    real = evaluate_module.score
    monkeypatch.setattr(evaluate_module, "score",
                        lambda *a, **k: threads.append(threading.current_thread()) or real(*a, **k))
    assert w.evaluate() and w.last_result is None and not w._evaluate.enabled  # running
    qtbot.waitUntil(lambda: w._runner.worker is None, timeout=30_000)
    assert threads and threads[0] is not threading.main_thread() and w._evaluate.enabled
    table = table_dict(w.case_table)
    assert table["Volume difference (voxels)"][0] == "2500"
    assert table["Volume difference (mm3)"][0] == "7500"
    assert table["Lesion count difference"][0] == "0"
    assert table_dict(w.session_table)["tracing (network)"][5] == "7500"


def test_session_list_keeps_cases_with_mean_sd_and_median(qtbot, widget):
    viewer, w = widget
    for name, shift in (("a", 0), ("b", 1), ("c", 2)):
        viewer.add_labels(cube(), name=f"ref {name}")
        viewer.add_labels(cube(shift=shift), name=f"pred {name}")
        w._truth.value, w._pred.value = viewer.layers[f"ref {name}"], viewer.layers[f"pred {name}"]
        evaluated(qtbot, w)
    dsc = [r.metrics.dsc for r in w.results]
    assert dsc[0] == 1.0 and dsc[0] > dsc[1] > dsc[2]
    rows = table_dict(w.session_table)
    assert list(rows) == ["ref a (pred a)", "ref b (pred b)", "ref c (pred c)", "mean \u00b1 SD",
                          "median", "global DSC"]
    assert rows["mean \u00b1 SD"][0] == f"{np.mean(dsc):.4f} \u00b1 {np.std(dsc, ddof=1):.4f}"
    assert rows["median"][0] == f"{np.median(dsc):.4f}"
    assert rows["ref a (pred a)"][-1] == "ref a (pred a)"  # the case after its values
    # the same prediction again (after a correction) replaces its row
    viewer.layers["pred c"].data = cube()
    w._truth.value, w._pred.value = viewer.layers["ref c"], viewer.layers["pred c"]
    evaluated(qtbot, w)
    assert [r.case for r in w.results] == ["ref a (pred a)", "ref b (pred b)", "ref c (pred c)"]
    assert table_dict(w.session_table)["ref c (pred c)"][0] == "1.0000"
    # another prediction of the same case (the raw network mask) gets its own row
    viewer.add_labels(cube(shift=2), name="raw c")
    w._truth.value, w._pred.value = viewer.layers["ref c"], viewer.layers["raw c"]
    evaluated(qtbot, w)
    rows = table_dict(w.session_table)
    assert rows["ref c (pred c)"][0] == "1.0000" and float(rows["ref c (raw c)"][0]) < 1.0
    w.clear()
    assert w.results == [] and w.session_table.row_headers == ()


def test_layers_read_from_nifti_use_the_file_geometry(qtbot, widget, tmp_path, shown):
    """A mask opened in LPS voxel order is shown reoriented; it still matches its own file."""
    viewer, w = widget
    truth_path = save_in_orientation(tmp_path / "sub-01_label-L_mask.nii.gz", cube(), "LPS")
    pred_path = save_in_orientation(tmp_path / "sub-01_pred_mask.nii.gz", cube(shift=1), "LPS")
    viewer.open(truth_path, plugin="napari-dunet")
    layer = viewer.layers[-1]
    w._truth.value = layer
    w._pred.value = FROM_FILE
    w._pred_file.value = pred_path
    assert w._pred_file.visible and not w._truth_file.visible
    result = evaluated(qtbot, w)
    expected = evaluate_files([pred_path], [truth_path])
    assert result.case == "sub-01 (sub-01_pred_mask.nii.gz)"
    assert result.metrics.dsc == pytest.approx(expected.metrics.dsc) and result.metrics.dsc < 1
    assert result.metrics.hd95_mm == pytest.approx(expected.metrics.hd95_mm)
    assert result.metrics.truth_ml == pytest.approx(cube().sum() * 3 / 1000)
    assert result.notes == [] and shown["error"] == []


def test_file_inputs(qtbot, widget, tmp_path):
    _, w = widget
    truth = save_in_orientation(tmp_path / "t_mask.nii.gz", cube(), "RAS")
    pred = save_in_orientation(tmp_path / "p_mask.nii.gz", cube(shift=2), "RAS")
    w._truth.value = w._pred.value = FROM_FILE
    w._truth_file.value, w._pred_file.value = truth, pred
    result = evaluated(qtbot, w)
    expected = evaluate_files([pred], [truth]).row()
    assert result.row() == {**expected, "case": "t (p_mask.nii.gz)"}


def test_shape_mismatch_is_shown_and_nothing_is_recorded(qtbot, widget, shown):
    viewer, w = widget
    viewer.add_labels(cube((12, 12, 8)), name="tracing")
    viewer.add_labels(cube((12, 12, 9)), name="network")
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    assert evaluated(qtbot, w) is None
    assert len(shown["error"]) == 1
    assert "(12, 12, 9)" in shown["error"][0] and "(12, 12, 8)" in shown["error"][0]
    assert w.results == []


def test_affine_mismatch_is_an_error_unless_voxel_arrays_are_compared(qtbot, widget, shown):
    viewer, w = widget
    viewer.add_labels(cube(), name="tracing")
    viewer.add_labels(cube(), name="network", translate=(5, 0, 0))
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    assert evaluated(qtbot, w) is None and w.results == []
    assert "not on the same grid" in shown["error"][0] and "(5.00, 0.00, 0.00) mm" in shown["error"][0]
    w._voxelwise.value = True
    result = evaluated(qtbot, w)
    assert result.metrics.dsc == 1.0  # voxel by voxel
    assert len(shown["warning"]) == 1 and "origin offset (5.00, 0.00, 0.00) mm" in shown["warning"][0]


def test_non_binary_labels_are_thresholded_with_a_note(qtbot, widget, shown):
    viewer, w = widget
    labels = cube()
    labels[3, 3, 3] = 2
    viewer.add_labels(cube(), name="tracing")
    viewer.add_labels(labels, name="network")
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    assert evaluated(qtbot, w).metrics.dsc == 1.0  # label 2 counts as lesion
    assert any("not binary" in m for m in shown["warning"])


def test_missing_inputs_are_explained(qtbot, widget, shown):
    _, w = widget
    w._truth.value = w._pred.value = FROM_FILE
    assert evaluated(qtbot, w) is None
    assert "Choose the prediction NIfTI file" in shown["error"][0]


def test_export_csv_never_replaces_a_file(qtbot, widget, tmp_path, shown):
    viewer, w = widget
    assert w.export_csv(tmp_path / "none.csv") is None  # nothing evaluated yet
    viewer.add_labels(cube(), name="tracing")
    viewer.add_labels(cube(shift=1), name="network")
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    evaluated(qtbot, w)
    path = w.export_csv(tmp_path / "session.csv")
    assert path.read_text() == csv_text(w.results)
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["case"] == "tracing (network)" and float(rows[0]["dsc"]) == pytest.approx(w.results[0].metrics.dsc)
    path.write_text("keep me")
    assert w.export_csv(path) is None and path.read_text() == "keep me"
    assert "exists" in shown["error"][-1]


def test_the_manifest_opens_the_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-dunet", "Evaluate")
    assert isinstance(widget, EvaluateWidget)


def test_widget_does_not_import_torch():
    code = ("import sys, napari_dunet._widgets.evaluate; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_empty_prediction_shows_infinite_hd95(qtbot, widget, shown):
    viewer, w = widget
    viewer.add_labels(cube(), name="tracing")
    viewer.add_labels(np.zeros_like(cube()), name="network")
    w._truth.value, w._pred.value = viewer.layers["tracing"], viewer.layers["network"]
    evaluated(qtbot, w)
    table = table_dict(w.case_table)
    assert table["DSC"][0] == "0.0000" and table["Recall"][0] == "0.0000"
    assert table["HD95 (mm)"][0] == "inf"
    assert table_dict(w.session_table)["median"][4] == "-"  # no finite HD95 to summarise
