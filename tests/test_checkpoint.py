"""Checkpoints: round trip, metadata, half precision, and every way loading can fail."""

import pytest
import torch

from napari_dunet.checkpoint import (average_checkpoints, default_metadata, load_checkpoint,
                                     read_metadata, save_checkpoint)
from napari_dunet.errors import CheckpointError
from napari_dunet.models import build_model


def test_round_trip_keeps_weights_buffers_and_metadata(tmp_path):
    torch.manual_seed(1)
    model = build_model("add-1")
    model.encoder[0].layers[1].running_mean.fill_(0.25)
    path = save_checkpoint(tmp_path / "m.safetensors", model,
                           default_metadata("add-1", threshold=0.4))
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == "add-1" and meta["threshold"] == 0.4
    assert meta["preprocessing"]["input_size"] == 192
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.training


def test_half_precision_is_smaller_and_loads_as_float32(tmp_path):
    model = build_model("dunet")
    full = save_checkpoint(tmp_path / "f.safetensors", model, default_metadata("dunet"))
    half = save_checkpoint(tmp_path / "h.safetensors", model, default_metadata("dunet"), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_average_of_epochs_is_the_mean_of_their_weights(tmp_path):
    """Weights and BatchNorm statistics are averaged; the last epoch's metadata is kept, with
    the averaged files recorded; checkpoints of different models are refused."""
    paths, models = [], []
    for i in range(3):
        torch.manual_seed(i)
        models.append(build_model("add-1"))
        paths.append(save_checkpoint(tmp_path / f"e{i}.safetensors", models[-1],
                                     default_metadata("add-1", threshold=0.5 + i / 10)))
    mean, meta = average_checkpoints(paths)
    for key, value in mean.state_dict().items():
        expected = [m.state_dict()[key] for m in models]
        if value.is_floating_point():
            assert torch.allclose(value, sum(expected) / 3, atol=1e-6), key
        else:
            assert torch.equal(value, expected[-1]), key
    assert meta["threshold"] == 0.7 and meta["averaged"] == ["e0.safetensors", "e1.safetensors",
                                                             "e2.safetensors"]
    other = save_checkpoint(tmp_path / "u.safetensors", build_model("dunet"),
                            default_metadata("dunet"))
    with pytest.raises(CheckpointError, match="for model 'dunet', not 'add-1'"):
        average_checkpoints([other, paths[0]])
    averaged = save_checkpoint(tmp_path / "mean.safetensors", mean, meta)
    copy, copy_meta = average_checkpoints([averaged])  # recording a threshold: one input
    assert copy_meta == meta  # the record of the averaged epochs survives the copy
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(),
                                                 mean.state_dict().values()))


def test_checkpoint_for_another_model(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("add-1"), default_metadata("add-1"))
    with pytest.raises(CheckpointError, match="for model 'add-1', not 'dunet'"):
        load_checkpoint(path, model_name="dunet")


def test_weights_that_do_not_fit_the_named_model(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("add-1"), default_metadata("dunet"))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(bad)
    pickled = tmp_path / "model.pt"
    torch.save({"a": torch.ones(2)}, pickled)
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)
    with pytest.raises(CheckpointError, match="no such"):
        read_metadata(tmp_path / "missing.safetensors")


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("add-1"), default_metadata("add-1"))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
