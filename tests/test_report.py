"""The lesion report (dunet report): registration to MNI152 2009a and the per-lesion summary,
on scans made from the template itself (so the right answer is known), at 4 mm for speed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

pytest.importorskip("dipy")
pytest.importorskip("nilearn")

from napari_dunet.cli import main  # noqa: E402
from napari_dunet.io import Volume  # noqa: E402
from napari_dunet.metrics import confusion, dice  # noqa: E402
from napari_dunet.registration import (iso_grid, load_template, register_to_mni,  # noqa: E402
                                       resample)
from napari_dunet.report import make_report, output_paths  # noqa: E402

LEFT = (-30.0, -12.0, 12.0)  # MNI mm: left deep white matter / insula, 11 mm radius
RIGHT = (32.0, -20.0, 40.0)  # right parietal white matter, 7 mm radius
MM = 4.0  # registration resolution in these tests (2 mm by default)


def sphere(shape: tuple[int, ...], affine: np.ndarray, centre, radius: float) -> np.ndarray:
    world = np.einsum("ij,j...->...i", affine[:3, :3], np.indices(shape)) + affine[:3, 3]
    return np.linalg.norm(world - np.asarray(centre), axis=-1) <= radius


def mni_case() -> tuple[Volume, Volume, np.ndarray]:
    """The template at 2 mm with two dark spherical lesions (left large, right small): the
    scan, its mask, and the lesions on the 1 mm template grid (what normalisation should give)."""
    t1, affine = load_template("t1")
    shape, grid = iso_grid(t1.shape, affine, 2.0)
    scan = resample(t1, affine, shape, grid)
    lesion = (sphere(shape, grid, LEFT, 11) | sphere(shape, grid, RIGHT, 7)) & (scan > 10)
    scan[lesion] = 25.0  # CSF-like cavity
    truth = (sphere(t1.shape, affine, LEFT, 11) | sphere(t1.shape, affine, RIGHT, 7)) & (t1 > 10)
    return Volume(scan, grid), Volume(lesion.astype(np.uint8), grid), truth


def las(volume: Volume) -> Volume:
    """The same volume stored in radiological order (first axis right -> left)."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = volume.data.shape[0] - 1
    return Volume(volume.data[::-1].copy(), volume.affine @ flip)


@pytest.fixture(scope="module")
def case():
    return mni_case()


@pytest.fixture(scope="module")
def ras_report(case):
    """The affine-only report of the lesioned template (the nonlinear one: the slow test)."""
    scan, mask, _ = case
    return make_report(scan, mask, mm=MM, nonlinear=False)


def test_known_affine_is_recovered():
    t1, affine = load_template("t1")
    truth = np.eye(4)  # native world -> MNI world
    truth[:3, :3] = Rotation.from_euler("xyz", [6, -4, 9], degrees=True).as_matrix() \
        * np.array([1.08, 0.94, 1.03])
    truth[:3, 3] = [7.0, -9.0, 5.0]
    shape, grid = iso_grid(t1.shape, affine, 2.0)
    scan = resample(t1, affine, shape, truth @ grid)  # native voxel v shows MNI point truth.grid.v
    found = register_to_mni(Volume(scan, grid), mm=MM, nonlinear=False).linear
    brain = np.argwhere(t1 > 10)[::97]
    points = np.c_[brain @ affine[:3, :3].T + affine[:3, 3], np.ones(len(brain))]
    error = np.linalg.norm((found @ points.T - np.linalg.inv(truth) @ points.T)[:3], axis=0)
    assert error.mean() < 1.5, error.mean()  # mm, at a working resolution of 4 mm


def check_lesions_in_place(report, truth):
    assert dice(confusion(report.mni_mask, truth)) >= 0.7
    s = report.summary
    assert s["lesion_count"] == 2 and s["hemisphere"] == "both"
    big, small = s["lesions"]
    for lesion, centre, side in ((big, LEFT, "left"), (small, RIGHT, "right")):
        assert lesion["hemisphere"] == side
        assert np.linalg.norm(np.subtract(lesion["centroid_mni_mm"], centre)) < 4.0
        assert 0.8 <= lesion["mni_ml"] / lesion["native_ml"] <= 1.25
        assert lesion["regions"][0]["region"].startswith(side)
    assert s["total_native_ml"] == pytest.approx(big["native_ml"] + small["native_ml"], abs=1e-3)
    assert s["registration"]["quality"] == "good" and not report.warnings


def test_scan_in_mni_space_keeps_its_lesions_in_place(case, ras_report):
    check_lesions_in_place(ras_report, case[2])
    assert ras_report.summary["lesions"][1]["native_ml"] == pytest.approx(
        (sphere(case[1].data.shape, case[1].affine, RIGHT, 7) & (case[1].data > 0)).sum()
        * 8 / 1000)


def test_left_and_right_never_swap_in_radiological_files(case):
    scan, mask, truth = case
    assert nib.aff2axcodes(las(scan).affine) == ("L", "A", "S")
    check_lesions_in_place(make_report(las(scan), las(mask), mm=MM, nonlinear=False), truth)


def test_mask_edits_reuse_the_transform(case, ras_report):
    scan, mask, _ = case
    left_only = mask.data * sphere(mask.data.shape, mask.affine, LEFT, 12)
    s = make_report(scan, Volume(left_only, mask.affine), transform=ras_report.transform).summary
    assert s["lesion_count"] == 1 and s["hemisphere"] == "left"
    assert s["lesions"][0] == ras_report.summary["lesions"][0]


@pytest.mark.slow
def test_nonlinear_registration_keeps_the_lesions_in_place(case):
    scan, mask, truth = case
    report = make_report(scan, mask, mm=MM)
    assert "SyN" in report.summary["registration"]["method"]
    check_lesions_in_place(report, truth)


def test_cli_writes_the_report_and_respects_existing_outputs(case, tmp_path, capsys):
    scan, mask, _ = case
    scan_path, mask_path = tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-01_mask.nii.gz"
    nib.save(nib.Nifti1Image(scan.data, scan.affine), scan_path)
    nib.save(nib.Nifti1Image(np.zeros_like(mask.data), mask.affine), mask_path)  # empty mask
    out = tmp_path / "out"
    args = ["report", str(scan_path), str(mask_path), "-o", str(out), "--resolution", "4",
            "--affine-only", "-q"]
    assert main(args) == 0
    paths = output_paths(out, "sub-01")
    assert all(p.is_file() for p in paths.values())
    summary = json.loads(paths["json"].read_text())
    assert summary["lesion_count"] == 0 and summary["total_native_ml"] == 0
    assert "0 lesions" in paths["markdown"].read_text()
    t1 = nib.load(paths["t1"])
    assert t1.shape == (197, 233, 189) and int(t1.header["sform_code"]) == 4
    before = paths["json"].stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 2  # exists: one line, nothing replaced
    assert capsys.readouterr().err.count("\n") == 1
    assert main(args + ["--skip-existing"]) == 0
    assert paths["json"].stat().st_mtime_ns == before


def test_mask_on_another_grid_is_one_line_error(case, tmp_path, capsys):
    scan, mask, _ = case
    scan_path, mask_path = tmp_path / "scan.nii.gz", tmp_path / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(scan.data, scan.affine), scan_path)
    nib.save(nib.Nifti1Image(mask.data[:, :, :-1], mask.affine), mask_path)
    assert main(["report", str(scan_path), str(mask_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different grids" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cases_pair_scans_with_their_masks(tmp_path):
    from napari_dunet.commands.report import find_pairs
    from napari_dunet.errors import InputError

    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    bids = tmp_path / "bids" / "sub-01" / "anat"
    bids.mkdir(parents=True)
    for name in ("sub-01_T1w", "sub-01_label-L_desc-T1lesion_mask"):
        nib.save(image, bids / f"{name}.nii.gz")
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(image, masks / "sub-01_mask.nii.gz")
    scan = bids / "sub-01_T1w.nii.gz"
    assert find_pairs([str(tmp_path / "bids")], None) == [
        ("sub-01", scan, bids / "sub-01_label-L_desc-T1lesion_mask.nii.gz")]
    assert find_pairs([str(tmp_path / "bids")], masks) == [
        ("sub-01", scan, masks / "sub-01_mask.nii.gz")]
    assert find_pairs([str(scan), str(masks / "sub-01_mask.nii.gz")], None)[0][2] == \
        masks / "sub-01_mask.nii.gz"
    (masks / "sub-01_mask.nii.gz").unlink()
    with pytest.raises(InputError, match="no mask sub-01_mask.nii.gz"):
        find_pairs([str(tmp_path / "bids")], masks)
