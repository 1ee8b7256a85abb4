"""The command line against hostile input: one clear line and exit 2, no traceback, nothing
partial left behind, existing outputs intact; a cohort survives a bad scan; kills mid-write."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_head

from napari_dunet.cli import main

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
KEPT = b"a mask corrected by hand"


def _save(path: Path, data, affine=AFFINE, **codes) -> None:
    img = nib.Nifti1Image(np.asarray(data), affine)
    for name, code in codes.items():
        img.header[name] = code
    nib.save(img, path)


def _datatype_code_1(path: Path) -> None:
    _save(path, make_head()[0])
    raw = bytearray(path.read_bytes())
    raw[70:74] = struct.pack("<hh", 1, 1)  # NIfTI datatype 1 (binary), 1 bit per voxel
    path.write_bytes(bytes(raw))


def _singular_sform(path: Path) -> None:
    img = nib.Nifti1Image(make_head()[0], AFFINE)
    sform = AFFINE.copy()
    sform[2] = [0, 0, 0, 0]
    img.set_sform(sform, 2)
    img.header["qform_code"] = 0
    nib.save(img, path)


def _truncated(path: Path) -> None:
    _save(path, make_head()[0])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


HEAD = make_head()[0]
#: name -> (writes the input file, what the one error line says)
BAD_SCANS = {
    "notes.txt": (lambda p: p.write_text("not an image"), "not a NIfTI"),
    "truncated.nii.gz": (_truncated, "truncated or corrupt"),
    "flat.nii.gz": (lambda p: _save(p, np.ones((8, 8), np.float32)), "expected a 3D volume"),
    "series.nii.gz": (lambda p: _save(p, np.ones((8, 8, 8, 3), np.float32)), "4D series"),
    "nan.nii.gz": (lambda p: _save(p, np.where(HEAD > 0, np.nan, 0).astype(np.float32)),
                   "NaN or infinite"),
    "constant.nii.gz": (lambda p: _save(p, np.full((20, 20, 8), 7, np.int16)), "empty"),
    "rgb.nii.gz": (lambda p: _save(p, np.zeros((8, 8, 8), [("R", "u1"), ("G", "u1"), ("B", "u1")])),
                   "RGB colour image"),
    "complex.nii.gz": (lambda p: _save(p, HEAD.astype(np.complex64)), "complex-valued"),
    "bits.nii": (_datatype_code_1, "header cannot be used"),
    "singular.nii.gz": (_singular_sform, "affine is singular"),
}
#: scans that are unusual but fine: name -> writes it
ODD_SCANS = {
    "int8.nii.gz": lambda p: _save(p, (HEAD // 8).astype(np.int8)),
    "float64.nii.gz": lambda p: _save(p, HEAD.astype(np.float64)),
    "oblique.nii.gz": lambda p: _save(p, HEAD, nib.affines.from_matvec(
        nib.eulerangles.euler2mat(0.3, 0.2, 0.1) @ np.diag([1.0, 1.0, 3.0]), [10, -5, 3])),
    "codes0.nii.gz": lambda p: _save(p, HEAD, qform_code=0, sform_code=0),
}


def segment(capsys, *args) -> tuple[int, str, str]:
    code = main(["segment", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def leftovers(folder: Path) -> list[str]:
    """Files a user would not expect in an output folder: temporaries and partial outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


@pytest.fixture
def out_dir(tmp_path) -> Path:
    """An output folder that already holds a user's corrected mask of another case."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "other_mask.nii.gz").write_bytes(KEPT)
    return out


def assert_one_clean_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("name", sorted(BAD_SCANS))
def test_bad_scan_one_line_naming_file_and_problem(name, tmp_path, out_dir, random_checkpoint, capsys):
    write, problem = BAD_SCANS[name]
    scan = tmp_path / name
    write(scan)
    code, _, err = segment(capsys, scan, "-o", out_dir, "--weights", random_checkpoint,
                           "--device", "cpu")
    assert_one_clean_line(code, err, str(scan), problem)
    assert sorted(p.name for p in out_dir.iterdir()) == ["other_mask.nii.gz"]
    assert (out_dir / "other_mask.nii.gz").read_bytes() == KEPT


@pytest.mark.parametrize("name", sorted(ODD_SCANS))
def test_odd_but_valid_scans_get_an_aligned_mask_with_the_source_codes(name, tmp_path, out_dir,
                                                                       random_checkpoint, capsys):
    scan = tmp_path / name
    ODD_SCANS[name](scan)
    code, _, err = segment(capsys, scan, "-o", out_dir, "--weights", random_checkpoint,
                           "--device", "cpu")
    assert code == 0, err
    source, mask = nib.load(scan), nib.load(out_dir / name.replace(".nii.gz", "_mask.nii.gz"))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    for field in ("qform_code", "sform_code"):
        assert mask.header[field] == source.header[field]
    assert leftovers(out_dir) == []


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "sub-01_T1w.nii.gz"
    _save(path, HEAD)
    return path


def _arch_mismatch(tmp_path: Path) -> Path:
    """A checkpoint whose metadata says D-UNet but whose weights are a 2D U-Net's."""
    from napari_dunet.checkpoint import default_metadata, save_checkpoint
    from napari_dunet.models import build_model

    path = tmp_path / "mislabelled.safetensors"
    save_checkpoint(path, build_model("unet2d-original"), default_metadata("dunet"))
    return path


@pytest.mark.parametrize("options,words", [
    (["--batch-size", "0"], ["batch size must be at least 1"]),
    (["--batch-size", "-3"], ["batch size must be at least 1"]),
    (["--threshold", "0"], ["--threshold"]),
    (["--threshold", "1.5"], ["--threshold"]),
    (["--threshold", "nan"], ["--threshold"]),
    (["--seed-threshold", "1"], ["--seed-threshold"]),
    (["--seed-threshold", "-0.2"], ["--seed-threshold"]),
    (["--seed-threshold", "nan"], ["--seed-threshold"]),
    (["--device", "tpu"], ["tpu"]),
    (["--dtype", "fp32", "--weights", "{tmp}/missing.safetensors"], ["{tmp}/missing.safetensors", "no such checkpoint file"]),
    (["--weights", "{tmp}"], ["{tmp} is a folder"]),
    (["--weights", "{tmp}/sub-01_T1w.nii.gz"], ["{tmp}/sub-01_T1w.nii.gz", "checkpoint"]),
    (["--weights", "{mislabelled}"], ["{mislabelled}", "do not fit model 'dunet'"]),
])
def test_bad_option_one_line(options, words, scan, tmp_path, out_dir, random_checkpoint, capsys):
    fill = {"tmp": tmp_path, "mislabelled": _arch_mismatch(tmp_path) if "{mislabelled}" in options else ""}
    options = [o.format(**fill) for o in options]
    weights = [] if "--weights" in options else ["--weights", random_checkpoint]
    code, _, err = segment(capsys, scan, "-o", out_dir, "--device", "cpu", *weights, *options)
    assert_one_clean_line(code, err, *(w.format(**fill) for w in words))
    assert sorted(p.name for p in out_dir.iterdir()) == ["other_mask.nii.gz"]


def test_output_that_is_a_file_or_an_existing_mask(scan, tmp_path, out_dir, random_checkpoint, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep")
    code, _, err = segment(capsys, scan, "-o", target, "--weights", random_checkpoint)
    assert_one_clean_line(code, err, str(target), "is a file, not a folder")
    assert target.read_text() == "keep"
    (out_dir / "sub-01_mask.nii.gz").write_bytes(KEPT)
    code, _, err = segment(capsys, scan, "-o", out_dir, "--weights", random_checkpoint)
    assert_one_clean_line(code, err, str(out_dir / "sub-01_mask.nii.gz"), "--overwrite")
    assert (out_dir / "sub-01_mask.nii.gz").read_bytes() == KEPT


def test_out_of_memory_says_what_the_scan_needs_and_what_to_try(scan, out_dir, random_checkpoint,
                                                                capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 75.0 MiB for an array")
    monkeypatch.setattr("napari_dunet.inference.predict_volume", no_memory)
    code, _, err = segment(capsys, scan, "-o", out_dir, "--weights", random_checkpoint,
                           "--device", "cpu", "--batch-size", "16")
    assert_one_clean_line(code, err, str(scan), "not enough memory", "40x48x12",
                          "1.7 GB more at batch size 16", "--batch-size 4")


def test_evaluate_refuses_masks_on_different_grids_unless_voxelwise(tmp_path, capsys):
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[3:6, 3:6, 3:6] = 1
    shifted = np.eye(4)
    shifted[0, 3] = 50.0
    _save(tmp_path / "truth.nii.gz", mask, np.eye(4))
    _save(tmp_path / "pred.nii.gz", mask, shifted)
    args = ["evaluate", "--pred", tmp_path / "pred.nii.gz", "--truth", tmp_path / "truth.nii.gz",
            "--csv", tmp_path / "scores.csv"]
    code = main(list(map(str, args)))
    err = capsys.readouterr().err
    assert_one_clean_line(code, err, "pred.nii.gz", "truth.nii.gz", "not on the same grid",
                          "origin offset (50.00, 0.00, 0.00) mm", "--voxelwise")
    assert not (tmp_path / "scores.csv").exists()
    assert main(list(map(str, args + ["--voxelwise"]))) == 0
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[1].startswith("truth,1.0,")  # the voxel arrays are identical


# ---- cohorts --------------------------------------------------------------------------------

def test_cohort_segments_every_readable_case_and_ends_with_a_summary(tmp_path, random_checkpoint):
    cohort, out = tmp_path / "cohort", tmp_path / "masks"
    cohort.mkdir()
    _save(cohort / "case1.nii.gz", HEAD)
    _truncated(cohort / "case2.nii.gz")
    _save(cohort / "case3.nii.gz", make_head(seed=3)[0])
    command = [sys.executable, "-m", "napari_dunet.cli", "segment", str(cohort), "-o", str(out),
               "--weights", str(random_checkpoint), "--device", "cpu"]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["case1_mask.nii.gz", "case3_mask.nii.gz"]
    lines = proc.stderr.strip().splitlines()  # not a terminal: a progress line per case
    assert len(lines) == 4, proc.stderr
    assert lines[0] == "dunet segment: [1/3] case1: segmenting 12 slices"
    assert str(cohort / "case2.nii.gz") in lines[1] and "truncated or corrupt" in lines[1]
    assert lines[2] == "dunet segment: [3/3] case3: segmenting 12 slices"
    assert lines[3] == "dunet segment: 2 done, 1 failed, 0 skipped; failed: case2."
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == ["case1", "case3"]
    # the rerun after fixing case 2 leaves the finished masks and segments the rest
    _save(cohort / "case2.nii.gz", make_head(seed=2)[0])
    (out / "case1_mask.nii.gz").write_bytes(KEPT)
    proc = subprocess.run(command + ["--skip-existing", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ("dunet segment: 1 done, 0 failed, 2 skipped "
                                   "(2 with existing outputs).")
    assert (out / "case1_mask.nii.gz").read_bytes() == KEPT
    assert (out / "case2_mask.nii.gz").is_file() and leftovers(out) == []


# ---- kills and permissions -------------------------------------------------------------------

KILLED_WRITER = """
import sys, time
from pathlib import Path
import nibabel, numpy as np, safetensors.torch
from napari_dunet.io import Volume, save_mask
from napari_dunet.checkpoint import default_metadata, save_checkpoint
from napari_dunet.models import build_model

def stall(*args, **kwargs):  # the first bytes are on disk, then the process is killed
    Path(str(args[1])).write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(120)

target = Path(sys.argv[2])
if sys.argv[1] == "mask":
    nibabel.save = stall
    save_mask(np.ones((4, 4, 4)), Volume(np.zeros((4, 4, 4)), np.eye(4)), target, overwrite=True)
else:
    safetensors.torch.save_file = stall
    import napari_dunet.checkpoint as checkpoint
    checkpoint.save_file = stall
    save_checkpoint(target, build_model("unet2d-original"), default_metadata("unet2d-original"))
"""


def _kill_mid_write(kind: str, target: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), kind, str(target)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kind", ["mask", "checkpoint"])
def test_kill_during_a_write_keeps_the_old_file_and_the_next_write_cleans_up(kind, tmp_path):
    from napari_dunet.checkpoint import default_metadata, load_checkpoint, save_checkpoint
    from napari_dunet.io import Volume, load_mask, save_mask
    from napari_dunet.models import build_model

    target = tmp_path / ("case_mask.nii.gz" if kind == "mask" else "model.safetensors")
    target.write_bytes(KEPT)
    _kill_mid_write(kind, target)
    assert target.read_bytes() == KEPT
    left = leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".{target.name}.partial-"), left
    if kind == "mask":
        save_mask(np.ones((4, 4, 4)), Volume(np.zeros((4, 4, 4)), np.eye(4)), target, overwrite=True)
        assert load_mask(target).data.all()
    else:
        save_checkpoint(target, build_model("unet2d-original"), default_metadata("unet2d-original"))
        assert load_checkpoint(target)[1]["model"] == "unet2d-original"
    assert leftovers(tmp_path) == []


def test_a_write_in_progress_elsewhere_is_left_alone(tmp_path):
    from napari_dunet.io import remove_partial_writes

    target = tmp_path / "case_mask.nii.gz"
    mine = tmp_path / f".{target.name}.partial-{os.getppid()}-abc.nii.gz"  # a live process
    gone = tmp_path / f".{target.name}.partial-999999999-abc.nii.gz"
    other = tmp_path / ".case2_mask.nii.gz.partial-999999999-abc.nii.gz"
    for path in (mine, gone, other):
        path.write_bytes(b"x")
    assert remove_partial_writes(target) == [gone]
    assert mine.exists() and other.exists()


def _as_nobody() -> list[str]:
    """The command prefix that runs Python as an unprivileged user (empty when not root)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        probe = subprocess.run(prefix + [sys.executable, "-c", "import napari_dunet"],
                               capture_output=True)
    except FileNotFoundError:
        pytest.skip("setpriv is not installed")
    if probe.returncode:
        pytest.skip("this Python installation cannot be run by an unprivileged user")
    return prefix


def test_read_only_output_folder(scan, random_checkpoint):
    prefix = _as_nobody()
    folder = Path(tempfile.mkdtemp(prefix="dunet-read-only-"))  # pytest's are private to root
    try:
        os.chmod(folder, 0o755)
        inputs = [shutil.copy(path, folder) for path in (scan, random_checkpoint)]
        locked = folder / "locked"
        locked.mkdir()
        (locked / "other_mask.nii.gz").write_bytes(KEPT)
        locked.chmod(0o555)
        proc = subprocess.run(prefix + [sys.executable, "-m", "napari_dunet.cli", "segment",
                                        inputs[0], "-o", str(locked / "new"), "--weights",
                                        inputs[1]], capture_output=True, text=True)
        assert_one_clean_line(proc.returncode, proc.stderr, f"cannot write in {locked}",
                              "permission denied")
        assert sorted(p.name for p in locked.iterdir()) == ["other_mask.nii.gz"]
    finally:
        shutil.rmtree(folder)
