"""``dunet segment`` end to end on a real T1, folders, options (bad input: test_hostile_input)."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_dunet.cli import main
from napari_dunet.fast import cpu_has_native_bf16


def run(capsys, *args):
    code = main(["segment", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_segment_real_t1_end_to_end(shared_data, random_checkpoint, tmp_path, capsys):
    code, out, err = run(capsys, shared_data / "ch2.nii.gz", "-o", tmp_path,
                         "--weights", random_checkpoint, "--device", "cpu", "--save-prob")
    assert code == 0, err
    src = nib.load(shared_data / "ch2.nii.gz")
    mask = nib.load(tmp_path / "ch2_mask.nii.gz")
    prob = nib.load(tmp_path / "ch2_prob.nii.gz")
    assert mask.shape == src.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask.affine, src.affine)
    for code_name in ("qform_code", "sform_code"):
        assert mask.header[code_name] == src.header[code_name]
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    np.testing.assert_array_equal(data, np.asarray(prob.dataobj) >= 0.5)
    row = next(line for line in out.splitlines() if line.startswith("ch2 "))
    assert float(row.split()[1]) == pytest.approx(data.sum() / 1000, abs=0.01)


def test_missing_weights_without_default(small_nifti, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("napari_dunet.weights.default_checkpoint", lambda: None)
    code, _, err = run(capsys, small_nifti[0], "-o", tmp_path / "o")
    assert code == 2 and "--weights" in err


def test_existing_output_needs_overwrite(small_nifti, random_checkpoint, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "sub-01_mask.nii.gz").write_bytes(b"edited by hand")
    args = [small_nifti[0], "-o", out, "--weights", random_checkpoint, "--device", "cpu"]
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert (out / "sub-01_mask.nii.gz").read_bytes() == b"edited by hand"
    code, _, _ = run(capsys, *args, "--overwrite")
    assert code == 0 and nib.load(out / "sub-01_mask.nii.gz").shape == (40, 48, 12)


def test_console_script_prints_no_traceback(tmp_path, random_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "napari_dunet.cli", "segment",
                           str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path),
                           "--weights", str(random_checkpoint)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr


@pytest.mark.slow
def test_segment_a_bids_folder(tmp_path, random_checkpoint, capsys):
    from conftest import make_head

    root = tmp_path / "bids"
    for i, sub in enumerate(("r001s001", "r001s002")):
        anat = root / f"sub-{sub}" / "ses-1" / "anat"
        anat.mkdir(parents=True)
        image, mask = make_head(seed=i)
        nib.save(nib.Nifti1Image(image, np.eye(4)), anat / f"sub-{sub}_ses-1_T1w.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)),
                 anat / f"sub-{sub}_ses-1_label-L_desc-T1lesion_mask.nii.gz")
    code, out, err = run(capsys, root, "-o", tmp_path / "out", "--weights", random_checkpoint,
                         "--device", "cpu", "--threshold", "0.3")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["sub-r001s001_ses-1_mask.nii.gz", "sub-r001s002_ses-1_mask.nii.gz"]
    assert "sub-r001s002_ses-1" in out


def test_no_mirror_gives_the_single_pass_map(small_nifti, random_checkpoint, tmp_path, capsys):
    """``--no-mirror`` writes the map of the unmirrored pass alone: what ``predict_volume``
    gives with ``mirror=False``, not the default's averaged map."""
    from napari_dunet.checkpoint import load_checkpoint
    from napari_dunet.inference import predict_volume
    from napari_dunet.io import load_volume
    from napari_dunet.options import SegmentOptions

    code, _, err = run(capsys, small_nifti[0], "-o", tmp_path, "--weights", random_checkpoint,
                       "--device", "cpu", "--precision", "fp32", "--no-mirror", "--save-prob")
    assert code == 0, err
    written = nib.load(tmp_path / "sub-01_prob.nii.gz").get_fdata()
    volume, model = load_volume(small_nifti[0]), load_checkpoint(random_checkpoint)[0]
    single, averaged = (predict_volume(volume, model, SegmentOptions(
        device="cpu", precision="fp32", mirror=mirror)) for mirror in (False, True))
    assert np.abs(written - single).max() < 1e-3 < np.abs(written - averaged).max()


@pytest.mark.slow
def test_precision_option_reaches_the_network(small_nifti, random_checkpoint, tmp_path, capsys):
    probs = {}
    for precision in ("fp32", "bf16", "mixed"):
        out = tmp_path / precision
        code, _, err = run(capsys, small_nifti[0], "-o", out, "--weights", random_checkpoint,
                           "--device", "cpu", "--precision", precision, "--save-prob")
        assert code == 0, err
        probs[precision] = nib.load(out / "sub-01_prob.nii.gz").get_fdata()
    difference = np.abs(probs["bf16"] - probs["fp32"])
    assert difference.max() < 0.05  # bfloat16 arithmetic: close to float32
    if cpu_has_native_bf16():  # without bf16 instructions OpenVINO's CPU plugin computes in f32
        assert difference.max() > 0  # not identical: bf16 did run
    assert np.array_equal(probs["mixed"] >= 0.5, probs["fp32"] >= 0.5)  # checked near 0.5


@pytest.mark.slow
def test_torchrun_shards_a_cohort_so_every_mask_is_written_once(tmp_path, random_checkpoint):
    from conftest import make_head

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in range(4):
        nib.save(nib.Nifti1Image(make_head(seed=i)[0], np.eye(4)), cohort / f"case{i}.nii.gz")
    out = tmp_path / "masks"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29517", "-m", "napari_dunet.cli", "segment", str(cohort),
         "-o", str(out), "--weights", str(random_checkpoint), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [f"case{i}_mask.nii.gz" for i in range(4)]
    rows = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("case")]
    rows = [name for name in rows if name != "case"]  # each process prints the table's header
    assert sorted(rows) == ["case0", "case1", "case2", "case3"]  # each case segmented once
    for k in (1, 2):
        assert f"dunet segment [shard {k}/2]: 2 done, 0 failed, 0 skipped." in proc.stderr


def test_shard_option_takes_every_nth_case(tmp_path, random_checkpoint, capsys):
    from conftest import make_head

    for i in range(3):
        nib.save(nib.Nifti1Image(make_head(seed=i)[0], np.eye(4)), tmp_path / f"case{i}.nii.gz")
    code, out, err = run(capsys, tmp_path, "-o", tmp_path / "masks", "--weights",
                         random_checkpoint, "--device", "cpu", "--shard", "2/2", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["case1_mask.nii.gz"]
    for bad, problem in (("3/2", "between 1 and N"), ("0/2", "between 1 and N"),
                         ("half", "expected K/N")):
        with pytest.raises(SystemExit) as exit_:
            main(["segment", str(tmp_path), "-o", str(tmp_path / "x"), "--shard", bad])
        assert exit_.value.code == 2 and problem in capsys.readouterr().err


def test_verbose_says_which_dtype_auto_runs(small_nifti, random_checkpoint, tmp_path, capsys,
                                            monkeypatch):
    from napari_dunet import cpu_dtype

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(cpu_dtype, "time_dtypes", lambda model, size=192: (0.4, 0.2))
    code, _, err = run(capsys, small_nifti[0], "-o", tmp_path / "o", "--weights",
                       random_checkpoint, "--device", "cpu", "-v", "-q")
    assert code == 0, err
    assert "dtype auto on this CPU" in err and ": mixed;" in err and "0.400 s in fp32" in err
    assert cpu_dtype.cache_file().is_file()
