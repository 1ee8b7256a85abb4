"""``dunet train``: training, resuming and fine-tuning from the command line, and its errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import make_head
from napari_dunet.checkpoint import load_checkpoint, read_metadata
from napari_dunet.cli import main
from napari_dunet.training.state import read_state, state_path

SHAPES = [(40, 48, 12), (44, 48, 12), (40, 52, 14), (36, 48, 12), (42, 46, 12)]
FAST = ["--input-size", "32", "--steps-per-epoch", "2", "--batch-size", "2"]


def write_dataset(root: Path, n: int = len(SHAPES)) -> Path:
    """A flat BIDS-like folder: sub-XX_T1w.nii.gz with sub-XX_label-L_desc-T1lesion_mask.nii.gz."""
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    for i, shape in enumerate(SHAPES[:n]):
        image, mask = make_head(shape, seed=i)
        nib.save(nib.Nifti1Image(image, affine), root / f"sub-{i:02d}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), root / f"sub-{i:02d}_label-L_desc-T1lesion_mask.nii.gz")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("atlas") / "flat")


def test_train_then_resume(dataset, tmp_path, tiny_model, capsys):
    out = tmp_path / "model.safetensors"
    args = ["train", "--data", str(dataset), "--out", str(out), "--model", tiny_model, *FAST]
    assert main([*args, "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "4 training and 1 validation cases" in printed
    assert "Trained 1 epoch;" in printed
    assert read_metadata(out)["training"]["cases"] == {"train": 4, "validation": 1}

    assert main([*args, "--epochs", "2", "--resume"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in table if line.strip()[:1].isdigit() and "cases" not in line]
    assert [r[0] for r in rows] == ["2"]  # only the new epoch ran
    assert read_state(state_path(out))[2]["epoch"] == 2


def test_fine_tune_takes_the_model_from_the_initial_checkpoint(dataset, tmp_path, tiny_model):
    base = tmp_path / "base.safetensors"
    assert main(["train", "--data", str(dataset), "--out", str(base), "--model", tiny_model,
                 "--epochs", "1", "--val-fraction", "0", *FAST]) == 0
    tuned = tmp_path / "tuned.safetensors"
    images = [str(dataset / f"sub-0{i}_T1w.nii.gz") for i in (1, 2)]  # files, masks beside them
    assert main(["train", "--data", *images, "--out", str(tuned), "--init", str(base),
                 "--epochs", "1", "--optimizer", "sgd", "--loss", "dice", "--val-fraction", "0",
                 *FAST]) == 0
    _, meta = load_checkpoint(tuned)
    assert meta["model"] == tiny_model and meta["training"]["init"] == str(base)
    assert meta["training"]["config"]["optimizer"] == "sgd"
    assert meta["training"]["cases"] == {"train": 2, "validation": 0}


def test_a_fine_tune_that_does_not_beat_its_start_writes_nothing(dataset, tmp_path, tiny_model,
                                                                 capsys):
    from napari_dunet.checkpoint import default_metadata, save_checkpoint
    from napari_dunet.models import build_model

    base = save_checkpoint(tmp_path / "base.safetensors", build_model(tiny_model),
                           default_metadata(tiny_model, threshold=0.3, seed_threshold=0.99))
    tuned = tmp_path / "tuned.safetensors"
    images = [str(dataset / f"sub-0{i}_T1w.nii.gz") for i in (1, 2)]
    assert main(["train", "--data", *images, "--out", str(tuned), "--init", str(base),
                 "--epochs", "2", "--lr", "1e-12", "--freeze-norm", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "of each case's slices held back" in printed
    assert [line.split()[0] for line in printed.splitlines() if line.startswith("start")]
    assert "Kept the starting weights: no epoch beat" in printed
    assert not tuned.exists()


def test_max_minutes_stops_on_time_with_a_usable_checkpoint(dataset, tmp_path, tiny_model,
                                                            capsys):
    out = tmp_path / "quick.safetensors"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--model", tiny_model,
                 "--epochs", "50", "--max-minutes", "0.0001", "--val-fraction", "0",
                 "--input-size", "32", "--steps-per-epoch", "40", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Stopped at the 0.0001-minute limit after epoch 1;" in printed
    _, meta = load_checkpoint(out)  # whole and loadable
    assert meta["training"]["epoch"] == 1 and meta["training"]["config"]["max_minutes"] == 0.0001
    assert read_state(state_path(out))[2]["epoch"] == 1


def test_quick_fine_tune_trains_the_decoder_with_synthetic_rehearsal_cases(dataset, tmp_path):
    out = tmp_path / "quick.safetensors"
    assert main(["train", "--data", str(dataset / "sub-01_T1w.nii.gz"), "--out", str(out),
                 "--init", "default", "--train-layers", "decoder", "--rehearsal", "1",
                 "--warmup-steps", "2", "--freeze-norm", "--epochs", "1", "--val-fraction", "0",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--crop-size", "96"]) == 0
    from napari_dunet import weights

    start, _ = load_checkpoint(weights.default_checkpoint())
    model, meta = load_checkpoint(out)
    training = meta["training"]
    names = training["case_names"]  # provenance: what it learned from
    assert names[0] == "sub-01" and names[1].startswith("rehearsal-0-Subject_") and len(names) == 2
    assert training["config"]["train_layers"] == "decoder"
    assert training["init"] == str(weights.default_checkpoint())
    after = model.state_dict()
    moved = [n for n, v in start.state_dict().items() if not torch.equal(v, after[n])]
    assert moved and all(n.startswith(("decoder.", "head.")) for n in moved)


def test_init_default_names_the_bundled_weights(dataset, tmp_path):
    from napari_dunet import weights

    out = tmp_path / "tuned.safetensors"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--init", "default",
                 "--epochs", "1", "--val-fraction", "0", "--input-size", "32",
                 "--steps-per-epoch", "1", "--batch-size", "1"]) == 0
    assert read_metadata(out)["training"]["init"] == str(weights.default_checkpoint())


@pytest.mark.parametrize("extra, message", [
    (["--resume"], "nothing to resume"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--model", "unet9"], "unknown model"),
    (["--max-minutes", "0"], "time limit must be a positive number"),
    (["--rehearsal", "-1"], "--rehearsal takes a number of cases"),
    (["--synth-workers", "0"], "--synth-workers takes a number of processes"),
])
def test_bad_requests_exit_with_one_clear_line(dataset, tmp_path, capsys, extra, message):
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "m.safetensors"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_refuses_to_overwrite_and_too_few_cases(dataset, tmp_path, capsys):
    existing = tmp_path / "m.safetensors"
    existing.write_bytes(b"keep me")
    assert main(["train", "--data", str(dataset), "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    one = write_dataset(tmp_path / "one", n=1)
    assert main(["train", "--data", str(one), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "too few cases for a validation split" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4)), empty / "sub-01_T1w.nii.gz")
    with pytest.warns(UserWarning, match="no lesion mask"):
        assert main(["train", "--data", str(empty), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert "no image with a lesion mask" in capsys.readouterr().err


def test_a_fine_tune_keeps_the_preprocessing_of_its_starting_weights(dataset, tmp_path):
    from napari_dunet import weights
    from napari_dunet.segmentation import checkpoint_preprocessing

    bundled = checkpoint_preprocessing(read_metadata(weights.default_checkpoint()))
    out = tmp_path / "tuned.safetensors"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--init", "default",
                 "--epochs", "1", "--val-fraction", "0", "--input-size", "32",
                 "--steps-per-epoch", "1", "--batch-size", "1"]) == 0
    meta = read_metadata(out)
    assert meta["preprocessing"]["scheme"] == bundled  # segmenting with it prepares as trained
    assert meta["training"]["config"]["preprocessing"] == bundled
