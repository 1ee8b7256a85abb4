"""Cohort evaluation: input checks, case matching, summaries, CSV/JSON, box plot, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_dunet.cli import main
from napari_dunet.errors import InputError, OutputExistsError
from napari_dunet.evaluation import (affine_difference, csv_text, evaluate_arrays, evaluate_files,
                                     find_masks, match_cases, plot_dsc_boxplot, report, summarize,
                                     write_csv)
from napari_dunet.metrics import compare_masks

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def save(path: Path, data, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def cube(shape=(10, 10, 6), lo=2, hi=6, dtype=np.uint8):
    mask = np.zeros(shape, dtype)
    mask[lo:hi, lo:hi, 1:4] = 1
    return mask


def results_with_dsc(values):
    """Cases whose DSC are the given values (one reference voxel pair each, hand-built)."""
    results = []
    for i, d in enumerate(values):
        truth = np.zeros((4, 4, 4), np.uint8)
        pred = np.zeros_like(truth)
        if d == 1.0:
            truth[0, 0, 0] = pred[0, 0, 0] = 1
        elif d == 0.5:  # TP 1, FP 2, FN 0: 2/(2+2)
            truth[0, 0, 0] = 1
            pred[0, 0, 0] = pred[3, 3, 3] = pred[3, 3, 2] = 1
        else:
            truth[0, 0, 0] = 1
        results.append(evaluate_arrays(pred, truth, name=f"case{i}"))
    return results


# ---- one case -----------------------------------------------------------------------------

def test_affine_difference_names_what_differs():
    assert affine_difference(AFFINE, AFFINE + 1e-6) is None
    shifted = AFFINE.copy()
    shifted[:3, 3] = [0, 2.5, 0]
    assert "origin offset (0.00, 2.50, 0.00) mm" in affine_difference(shifted, AFFINE)
    assert "voxel size 1x1x1 mm vs 1x1x3 mm" in affine_difference(np.eye(4), AFFINE)
    flipped = AFFINE.copy()
    flipped[0, 0] = -1
    assert "180.0 degrees" in affine_difference(flipped, AFFINE)


def test_affine_mismatch_is_an_error_naming_the_offset_unless_voxelwise():
    truth, pred = cube(), np.roll(cube(), 1, axis=0)
    shifted = AFFINE.copy()
    shifted[:3, 3] = [4.0, 0, 0]
    with pytest.raises(InputError, match=r"not on the same grid.*\(4.00, 0.00, 0.00\) mm"):
        evaluate_arrays(pred, truth, pred_affine=shifted, truth_affine=AFFINE)
    result = evaluate_arrays(pred, truth, pred_affine=shifted, truth_affine=AFFINE, voxelwise=True)
    assert len(result.notes) == 1 and "origin offset (4.00, 0.00, 0.00) mm" in result.notes[0]
    m, expected = result.metrics, compare_masks(pred, truth, spacing=(1, 1, 3))
    assert (m.confusion, m.dsc, m.lesions, m.hd95_mm) == \
        (expected.confusion, expected.dsc, expected.lesions, expected.hd95_mm)
    assert m.volume_diff_mm3 == pytest.approx(expected.volume_diff_mm3)
    assert evaluate_arrays(pred, truth, pred_affine=AFFINE, truth_affine=AFFINE).notes == []


def test_shape_mismatch_names_both_shapes(tmp_path):
    with pytest.raises(InputError, match=r"\(10, 10, 6\).*\(10, 10, 7\)"):
        evaluate_arrays(cube(), cube((10, 10, 7)))
    p, t = save(tmp_path / "p.nii.gz", cube()), save(tmp_path / "t.nii.gz", cube((10, 10, 7)))
    with pytest.raises(InputError, match=r"p\.nii\.gz has shape \(10, 10, 6\).*\(10, 10, 7\)"):
        evaluate_files([p], [t])


def test_non_binary_masks_are_thresholded_with_a_note(tmp_path):
    truth = cube()
    probs = cube(dtype=np.float32) * 0.7
    probs[0, 0, 0] = 0.3  # below the threshold: not lesion
    result = evaluate_files([save(tmp_path / "p.nii.gz", probs)], [save(tmp_path / "t.nii.gz", truth)])
    assert result.metrics.dsc == 1.0
    assert len(result.notes) == 1 and "not binary (values 0 to 0.7)" in result.notes[0]
    assert "p.nii.gz" in result.notes[0]


def test_files_use_the_reference_voxel_size(tmp_path):
    truth = cube()
    pred = np.roll(truth, 2, axis=2)  # two slices along the 3 mm axis
    result = evaluate_files([save(tmp_path / "p.nii.gz", pred)], [save(tmp_path / "t.nii.gz", truth)])
    m = result.metrics
    assert m.volume_diff_voxels == 0 and m.truth_ml == pytest.approx(48 * 3 / 1000)
    assert m.hd95_mm == pytest.approx(6.0)  # two 3 mm slices
    assert result.case == "t"


def test_several_reference_files_are_united(tmp_path):
    a, b = cube(lo=1, hi=3), cube(lo=5, hi=8)
    paths = [save(tmp_path / "c1_lesion1.nii.gz", a), save(tmp_path / "c1_lesion2.nii.gz", b)]
    result = evaluate_files([save(tmp_path / "pred.nii.gz", a | b)], paths)
    assert result.metrics.dsc == 1.0 and result.metrics.lesions.n_truth == 2


# ---- cohorts ------------------------------------------------------------------------------

def bids_reference(root: Path, subject: str, mask) -> Path:
    anat = root / f"sub-{subject}" / "ses-1" / "anat"
    stem = f"sub-{subject}_ses-1_space-MNI152NLin2009aSym"
    save(anat / f"{stem}_T1w.nii.gz", np.ones_like(mask, dtype=np.int16))
    return save(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", mask)


def test_match_bids_references_with_segment_outputs(tmp_path):
    truth_root, pred_root = tmp_path / "bids", tmp_path / "pred"
    for subject in ("r001s001", "r001s002", "r001s003"):
        bids_reference(truth_root, subject, cube())
    for subject in ("r001s001", "r001s002", "r009s009"):
        save(pred_root / f"sub-{subject}_ses-1_mask.nii.gz", cube())
        save(pred_root / f"sub-{subject}_ses-1_prob.nii.gz", cube(dtype=np.float32) * 0.9)
    assert sorted(find_masks(truth_root)) == ["sub-r001s001_ses-1", "sub-r001s002_ses-1",
                                              "sub-r001s003_ses-1"]
    matching = match_cases(pred_root, truth_root)
    assert [name for name, _, _ in matching.pairs] == ["sub-r001s001_ses-1", "sub-r001s002_ses-1"]
    assert all(p[0].name.endswith("_mask.nii.gz") and t[0].name.endswith("T1lesion_mask.nii.gz")
               for _, p, t in matching.pairs)  # T1w images and probability maps are not masks
    assert matching.pred_only == ["sub-r009s009_ses-1"]
    assert matching.truth_only == ["sub-r001s003_ses-1"]


def test_plain_files_count_as_masks_when_none_has_a_mask_name(tmp_path):
    save(tmp_path / "Subject_001.nii.gz", cube())
    save(tmp_path / "Subject_002.nii.gz", cube())
    assert sorted(find_masks(tmp_path)) == ["Subject_001", "Subject_002"]


def test_matching_errors(tmp_path):
    file = save(tmp_path / "a_mask.nii.gz", cube())
    (tmp_path / "d1").mkdir()
    save(tmp_path / "d2" / "x_mask.nii.gz", cube())
    save(tmp_path / "d3" / "y_mask.nii.gz", cube())
    with pytest.raises(InputError, match="two mask files or two folders"):
        match_cases(file, tmp_path / "d2")
    with pytest.raises(InputError, match="no such prediction"):
        match_cases(tmp_path / "missing", tmp_path / "d2")
    with pytest.raises(InputError, match="no NIfTI masks"):
        match_cases(tmp_path / "d2", tmp_path / "d1")
    with pytest.raises(InputError, match="no case names in common"):
        match_cases(tmp_path / "d2", tmp_path / "d3")


def test_summary_statistics_by_hand():
    results = results_with_dsc([1.0, 0.5, 0.0])
    s = summarize(results)
    assert s["n_cases"] == 3
    assert (s["dsc_mean"], s["dsc_median"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert s["dsc_sd"] == pytest.approx(0.5)  # sample SD of 1, 0.5, 0
    # pooled: TP 1+1+0, FP 0+2+0, FN 0+0+1
    assert s["dsc_global"] == pytest.approx(4 / (4 + 2 + 1))
    assert s["hd95_mm_n_infinite"] == 1  # the empty prediction
    assert math.isfinite(s["hd95_mm_mean"])
    assert math.isnan(summarize(results[:1])["dsc_sd"])


def test_report_is_valid_json_without_nan_or_infinity():
    results = results_with_dsc([1.0, 0.0])
    data = json.loads(json.dumps(report(results), allow_nan=False))
    assert [c["case"] for c in data["cases"]] == ["case0", "case1"]
    assert data["cases"][1]["hd95_mm"] is None  # infinite: one mask empty
    for key in ("case", "dsc", "precision", "recall", "volume_diff_voxels", "volume_diff_mm3",
                "lesion_count_diff", "lesion_f1", "hd95_mm"):
        assert key in data["cases"][0]
    for key in ("dsc_mean", "dsc_sd", "dsc_median", "dsc_global", "precision_mean", "recall_mean"):
        assert key in data["summary"]


def test_csv_rows_and_summary(tmp_path):
    results = results_with_dsc([1.0, 0.5, 0.0])
    rows = list(csv.DictReader(io.StringIO(csv_text(results))))
    assert [r["case"] for r in rows] == ["case0", "case1", "case2", "mean", "sd", "median", "global"]
    assert float(rows[1]["dsc"]) == pytest.approx(0.5)
    assert rows[2]["hd95_mm"] == "inf"
    assert float(rows[3]["dsc"]) == pytest.approx(0.5)
    assert float(rows[6]["dsc"]) == pytest.approx(4 / 7)
    path = write_csv(results, tmp_path / "scores.csv")
    assert path.read_text() == csv_text(results)
    with pytest.raises(OutputExistsError):
        write_csv(results[:1], path)
    assert path.read_text() == csv_text(results)  # the existing results file is kept


def test_box_plot_png(tmp_path):
    path = plot_dsc_boxplot(results_with_dsc([1.0, 0.5, 0.0, 0.5]), tmp_path / "dsc.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300
    with pytest.raises(OutputExistsError):
        plot_dsc_boxplot(results_with_dsc([1.0]), path)


# ---- the command ----------------------------------------------------------------------------

@pytest.fixture
def real_cohort(shared_data, tmp_path):
    """Three real lesion masks as references; predictions are shifted, dilated copies (two of
    them) and one prediction without a reference."""
    truth_root, pred_root = tmp_path / "truth", tmp_path / "pred"
    for number in (1, 2, 3):
        img = nib.load(shared_data / "lesions" / f"Subject_{number:03d}.nii.gz")
        mask = np.asanyarray(img.dataobj) > 0.5
        save(truth_root / f"Subject_{number:03d}.nii.gz", mask.astype(np.uint8), img.affine)
        if number < 3:
            pred = ndimage.binary_dilation(np.roll(mask, number, axis=0))
            save(pred_root / f"Subject_{number:03d}_mask.nii.gz", pred.astype(np.uint8), img.affine)
    save(pred_root / "Subject_099_mask.nii.gz", np.zeros((181, 217, 181), np.uint8), img.affine)
    return pred_root, truth_root


def test_cli_cohort_json_csv_and_plot(real_cohort, tmp_path, capsys):
    pred_root, truth_root = real_cohort
    out = tmp_path / "results" / "scores.csv"
    code = main(["evaluate", "--pred", str(pred_root), "--truth", str(truth_root),
                 "--json", "--csv", str(out), "--connectivity", "26"])
    captured = capsys.readouterr()
    assert code == 0
    data = json.loads(captured.out)
    assert [c["case"] for c in data["cases"]] == ["Subject_001", "Subject_002"]
    assert data["connectivity"] == 26
    assert data["unmatched"] == {"pred_only": ["Subject_099"], "truth_only": ["Subject_003"]}
    assert "Subject_099" in captured.err and "Subject_003" in captured.err
    for case in data["cases"]:
        ref = nib.load(truth_root / f"{case['case']}.nii.gz").get_fdata() > 0.5
        pred = nib.load(pred_root / f"{case['case']}_mask.nii.gz").get_fdata() > 0.5
        assert case["dsc"] == pytest.approx(2 * (ref & pred).sum() / (ref.sum() + pred.sum()))
        assert 0.5 < case["dsc"] < 1.0
    rows = list(csv.DictReader(out.open()))
    assert [r["case"] for r in rows][:2] == ["Subject_001", "Subject_002"]
    assert float(rows[0]["dsc"]) == pytest.approx(data["cases"][0]["dsc"])
    assert (tmp_path / "results" / "scores_dsc.png").is_file()
    # a second run must not replace the results without --overwrite
    before = out.read_bytes()
    assert main(["evaluate", "--pred", str(pred_root), "--truth", str(truth_root),
                 "--csv", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_cli_two_files_table(tmp_path, capsys):
    truth = save(tmp_path / "t_mask.nii.gz", cube())
    pred = save(tmp_path / "p_mask.nii.gz", np.roll(cube(), 1, axis=0))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth),
                 "--plot", str(tmp_path / "box.png")]) == 0
    out = capsys.readouterr().out
    assert "DSC" in out.splitlines()[0]
    row = out.splitlines()[1].split()
    assert row[0] == "t" and float(row[1]) == pytest.approx(0.75)  # 2*36/(48+48)
    assert "global 0.750" in out
    assert (tmp_path / "box.png").is_file()


def test_cli_shape_mismatch_is_an_error(tmp_path, capsys):
    truth = save(tmp_path / "t_mask.nii.gz", cube())
    pred = save(tmp_path / "p_mask.nii.gz", cube((10, 10, 7)))
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert "(10, 10, 7)" in err and "(10, 10, 6)" in err


def test_segment_scores_against_the_mask_beside_the_input(small_nifti, random_checkpoint,
                                                          tmp_path, capsys):
    image, mask = small_nifti
    assert main(["segment", str(image.parent), "-o", str(tmp_path / "out"),
                 "--weights", str(random_checkpoint)]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:6] == ["case", "lesion", "mL", "DSC", "prec.", "recall"]
    new = nib.load(tmp_path / "out" / "sub-01_mask.nii.gz").get_fdata() > 0.5
    ref = nib.load(mask).get_fdata() > 0.5
    expected = compare_masks(new, ref, spacing=(1, 1, 3))
    cells = row.split()
    assert cells[0] == "sub-01"
    assert float(cells[2]) == pytest.approx(expected.dsc, abs=5e-4)
    assert float(cells[5]) == pytest.approx(expected.truth_ml, abs=5e-3)
