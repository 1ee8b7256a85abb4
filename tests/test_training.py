"""Training engine: data, sampling, augmentation, learning, resuming, stopping, files."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import make_head
from napari_dunet.checkpoint import load_checkpoint, read_metadata
from napari_dunet.errors import CheckpointError, InputError
from napari_dunet.training import state as state_module
from napari_dunet.training.augment import augment_batch, random_crops
from napari_dunet.training.config import TrainConfig
from napari_dunet.training.data import (BalancedSampler, make_batch, prepare_case,
                                        split_cases)
from napari_dunet.training import engine
from napari_dunet.training.engine import EpochMetrics, StepProgress, train, training_events
from napari_dunet.training.state import read_state, state_path

SIZE = 32
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
SHAPES = [(40, 48, 12), (44, 48, 12), (40, 52, 14), (36, 48, 12), (42, 46, 12)]


def synthetic_cases(n=len(SHAPES)):
    return [prepare_case(*make_head(shape, seed=i), AFFINE, f"case{i}", input_size=SIZE)
            for i, shape in enumerate(SHAPES[:n])]


def config(model, **kw):
    base = dict(model=model, epochs=2, batch_size=4, lr=3e-3, input_size=SIZE, steps_per_epoch=3,
                patience=0)
    return TrainConfig(**{**base, **kw})


# -- data --------------------------------------------------------------------------------------
def test_prepared_case_is_compact_and_aligned():
    image, mask = make_head()
    case = prepare_case(image, mask, AFFINE, "c", input_size=SIZE)
    assert case.slices.dtype == torch.float16 and case.masks.dtype == torch.uint8
    # twelve 3 mm slices, each split into three ~1 mm network slices
    assert case.slices.shape == case.masks.shape == (36, SIZE, SIZE)
    assert set(torch.unique(case.masks).tolist()) == {0, 1}
    assert case.lesion.sum() == 3 * np.any(mask, axis=(0, 1)).sum()
    # lesion pixels sit in the dark blob inside the bright head
    lesion_z = int(np.flatnonzero(case.lesion)[len(np.flatnonzero(case.lesion)) // 2])
    inside = case.slices[lesion_z][case.masks[lesion_z] > 0].float().mean()
    assert inside < 0.6 * case.slices[lesion_z].float().max()


def test_mismatched_shapes_are_rejected():
    image, mask = make_head()
    with pytest.raises(InputError, match="shape"):
        prepare_case(image, mask[:, :, :-1], AFFINE, "bad")


def test_empty_mask_is_allowed_with_a_warning():
    image, mask = make_head()
    with pytest.warns(UserWarning, match="empty"):
        case = prepare_case(image, np.zeros_like(mask), AFFINE, "healthy", input_size=SIZE)
    assert not case.lesion.any()


def test_split_is_seeded_disjoint_and_refuses_too_few_cases():
    names = [f"c{i}" for i in range(10)]
    train_a, val_a = split_cases(names, 0.2, seed=1)
    assert split_cases(names, 0.2, seed=1) == (train_a, val_a)
    assert len(val_a) == 2 and sorted(train_a + val_a) == names
    assert split_cases(names, 0.0) == (names, [])
    with pytest.raises(InputError, match="too few cases"):
        split_cases(["only"], 0.2)


def test_batches_are_half_lesion_and_skip_empty_slices():
    image, mask = make_head((40, 48, 24))
    padded_image = np.concatenate([np.zeros((40, 48, 6), image.dtype), image], axis=2)
    padded_mask = np.concatenate([np.zeros((40, 48, 6), mask.dtype), mask], axis=2)
    case = prepare_case(padded_image, padded_mask, AFFINE, "c", input_size=SIZE)
    assert not case.head[:6].any()  # slices of air are not part of the head
    assert 0 < case.lesion.sum() < case.head.sum()
    sampler = BalancedSampler([case], batch_size=8, lesion_fraction=0.5)
    batches = sampler.batches(20, np.random.default_rng(0))
    for picks in batches:
        assert case.lesion[picks[:, 1]].sum() == 4
        assert (picks[:, 1] >= 6).all()
    _, masks = make_batch([case], batches[0])
    assert masks.shape == (8, 1, SIZE, SIZE)
    assert (masks.flatten(1).amax(1) > 0).sum() == 4


def test_augmentation_moves_image_and_mask_together():
    image, mask = make_head()
    case = prepare_case(image, mask, AFFINE, "c", input_size=SIZE)
    picks = np.array([[0, z] for z in np.flatnonzero(case.lesion)])
    _, masks = make_batch([case], picks)
    stacks = masks.repeat(1, 4, 1, 1)  # a stack that is the mask itself
    out_stacks, out_masks = augment_batch(stacks, masks, torch.Generator().manual_seed(0))
    assert torch.equal((out_stacks[:, 2:3] >= 0.5).float(), out_masks)  # same transform
    assert not torch.equal(out_masks, masks)  # and it did transform
    again = augment_batch(stacks, masks, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_stacks)  # seeded


def test_crops_keep_lesion_in_view_and_image_and_mask_aligned():
    images = torch.rand(6, 4, 64, 64)
    masks = torch.zeros(6, 1, 64, 64)
    masks[:3, :, 50:54, 3:7] = 1  # a small lesion near a corner in the first three samples
    images[:, 2:3] = masks  # the centre slice is the mask itself
    out_images, out_masks = random_crops(images, masks, 32, torch.Generator().manual_seed(0))
    assert out_images.shape == (6, 4, 32, 32) and out_masks.shape == (6, 1, 32, 32)
    assert torch.equal(out_images[:, 2:3], out_masks)  # same window for stack and mask
    assert (out_masks[:3].flatten(1).sum(1) > 0).all()  # lesion windows show lesion
    again = random_crops(images, masks, 32, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out_images)  # seeded
    with pytest.raises(ValueError, match="exceeds"):
        random_crops(images, masks, 80, torch.Generator())


def test_training_on_crops_segments_whole_slices(tiny_model, tmp_path):
    cases = synthetic_cases()
    result = train(cases[:4], cases[4:], config(tiny_model, epochs=20, batch_size=8,
                                                 steps_per_epoch=8, crop_size=16),
                   tmp_path / "model.safetensors")
    assert result.best_val_dsc > 0.5  # validated on whole 32x32 slices
    assert load_checkpoint(result.checkpoint)[1]["training"]["config"]["crop_size"] == 16


# -- training ----------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_raises_validation_dsc(tiny_model, tmp_path):
    cases = synthetic_cases()
    history = []
    result = train(cases[:4], cases[4:], config(tiny_model, epochs=10, batch_size=8,
                                                 steps_per_epoch=8),
                   tmp_path / "model.safetensors", on_epoch=history.append)
    assert [m.epoch for m in history] == list(range(1, 11))
    first = history[0]
    assert np.mean([m.train_loss for m in history[-3:]]) < 0.8 * first.train_loss
    assert result.best_val_dsc > 0.5
    assert result.best_val_dsc > first.val_dsc + 0.3
    assert result.stop_reason == "completed"
    # the checkpoint holds the best epoch and segments with the ordinary loader
    model, meta = load_checkpoint(result.checkpoint)
    assert meta["model"] == tiny_model and meta["training"]["epoch"] == result.best_epoch
    assert meta["training"]["val_dsc"] == pytest.approx(result.best_val_dsc)
    assert meta["preprocessing"]["input_size"] == SIZE
    with torch.no_grad():
        probs = model(cases[4].stacks(np.flatnonzero(cases[4].lesion)))
    assert probs.shape[1:] == (1, SIZE, SIZE)


def test_progress_events_count_every_step(tiny_model, tmp_path):
    events = list(_events(training_events(synthetic_cases(2), [], config(tiny_model),
                                          tmp_path / "m.safetensors")))
    steps = [e for e in events if isinstance(e, StepProgress)]
    epochs = [e for e in events if isinstance(e, EpochMetrics)]
    assert [(s.done, s.total) for s in steps] == [(i, 6) for i in range(1, 7)]
    assert [e.epoch for e in epochs] == [1, 2] and all(e.val_dsc is None for e in epochs)
    assert events[-1].stop_reason == "completed" and events[-1].epochs_completed == 2


def _events(generator):
    """Yield the events and then the returned result."""
    try:
        while True:
            yield next(generator)
    except StopIteration as stop:
        yield stop.value


def test_resume_continues_exactly_where_it_stopped(tiny_model, tmp_path):
    cases = synthetic_cases(2)
    straight = train(cases[:1], cases[1:], config(tiny_model, epochs=2), tmp_path / "a.safetensors")
    first = train(cases[:1], cases[1:], config(tiny_model, epochs=1), tmp_path / "b.safetensors")
    assert first.epochs_completed == 1
    resumed = train(cases[:1], cases[1:], config(tiny_model, epochs=2), tmp_path / "b.safetensors",
                    resume=True)
    assert resumed.epochs_completed == 2 and len(resumed.history) == 2
    weights_a, _, info_a = read_state(straight.state)
    weights_b, optim_b, info_b = read_state(resumed.state)
    assert info_b["epoch"] == 2
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert [m["train_loss"] for m in info_a["history"]] == [m["train_loss"] for m in info_b["history"]]
    assert optim_b["state"][0]["step"] == 6  # Adam's step count went on from 3
    again = train(cases[:1], cases[1:], config(tiny_model, epochs=2), tmp_path / "b.safetensors",
                  resume=True)
    assert again.epochs_completed == 2 and "already ran 2 epochs" in again.message


def test_resume_rejects_another_model_or_a_missing_state(tiny_model, tmp_path):
    cases = synthetic_cases(2)
    out = tmp_path / "m.safetensors"
    train(cases, [], config(tiny_model, epochs=1), out)
    with pytest.raises(CheckpointError, match="optimizer"):
        train(cases, [], config(tiny_model, optimizer="sgd"), out, resume=True)
    with pytest.raises(CheckpointError, match="no training state"):
        train(cases, [], config(tiny_model), tmp_path / "other.safetensors", resume=True)


def test_state_file_is_safetensors_with_json_and_model_file_stays_loadable(tiny_model, tmp_path):
    out = tmp_path / "m.safetensors"
    train(synthetic_cases(2), [], config(tiny_model, epochs=1, optimizer="sgd", momentum=0.9), out)
    assert state_path(out) == tmp_path / "m.state.safetensors"
    with safe_open(str(state_path(out)), framework="pt") as f:
        keys = set(f.keys())
        info = json.loads(f.metadata()["napari_dunet_state"])
    assert any(k.startswith("optimizer.") and k.endswith("momentum_buffer") for k in keys)
    assert {k for k in keys if k.startswith("model.")}
    assert info["epoch"] == 1 and info["config"]["optimizer"] == "sgd"
    assert read_metadata(out)["model"] == tiny_model  # the model file is a plain checkpoint
    with pytest.raises(CheckpointError):
        load_checkpoint(state_path(out))  # and the state is not mistaken for one


def test_fine_tuning_starts_from_the_given_checkpoint(tiny_model, tmp_path):
    cases = synthetic_cases(2)
    base = train(cases, [], config(tiny_model, epochs=1), tmp_path / "base.safetensors")
    start, _ = load_checkpoint(base.checkpoint)
    tuned = train(cases, [], config(tiny_model, epochs=1, lr=1e-12, augment=False),
                  tmp_path / "tuned.safetensors", init=base.checkpoint)
    model, meta = load_checkpoint(tuned.checkpoint)
    assert meta["training"]["init"] == str(base.checkpoint)
    for (name, a), b in zip(start.named_parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name  # a tiny learning rate barely moves it
    with pytest.raises(CheckpointError, match="dunet-tiny"):
        train(cases, [], config("dunet", epochs=1), tmp_path / "x.safetensors", init=base.checkpoint)


def test_fine_tuning_with_frozen_normalisation_keeps_the_batchnorm_statistics(tiny_model, tmp_path):
    cases = synthetic_cases(2)
    base = train(cases, [], config(tiny_model, epochs=1), tmp_path / "base.safetensors")
    start, _ = load_checkpoint(base.checkpoint)
    runs = {}
    for freeze in (True, False):
        tuned = train(cases, [], config(tiny_model, epochs=1, freeze_norm=freeze),
                      tmp_path / f"tuned-{freeze}.safetensors", init=base.checkpoint)
        runs[freeze] = load_checkpoint(tuned.checkpoint)[0]
    for name, before in start.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(before, dict(runs[True].named_buffers())[name]), name
    changed = [name for name, before in start.named_buffers() if name.endswith("running_mean")
               and not torch.equal(before, dict(runs[False].named_buffers())[name])]
    assert changed  # without the option a fine-tune moves them
    weights_moved = [n for (n, a), b in zip(start.named_parameters(), runs[True].parameters())
                     if not torch.equal(a, b)]
    assert weights_moved  # the weights still learn


def test_decoder_only_fine_tuning_keeps_the_encoder_exactly(tiny_model, tmp_path):
    cases = synthetic_cases(2)
    base = train(cases, [], config(tiny_model, epochs=1), tmp_path / "base.safetensors")
    start, _ = load_checkpoint(base.checkpoint)
    tuned = train(cases, [], config(tiny_model, epochs=1, train_layers="decoder"),
                  tmp_path / "tuned.safetensors", init=base.checkpoint)
    model, meta = load_checkpoint(tuned.checkpoint)
    after = dict(model.state_dict())
    moved = {name for name, before in start.state_dict().items()
             if not torch.equal(before, after[name])}
    assert moved and all(name.startswith(("decoder.", "head.")) for name in moved)
    assert any(name.startswith("head.") for name in moved)
    assert meta["training"]["config"]["train_layers"] == "decoder"
    with pytest.raises(CheckpointError, match="train_layers"):  # resume needs the same layers
        train(cases, [], config(tiny_model, epochs=2), tmp_path / "tuned.safetensors", resume=True)


def test_warm_up_raises_the_learning_rate_step_by_step(tiny_model, tmp_path, monkeypatch):
    seen = []
    step = engine._Trainer._step

    def record(self, *args):
        loss = step(self, *args)
        seen.append(self.optimizer.param_groups[0]["lr"])  # what this step ran with
        return loss

    monkeypatch.setattr(engine._Trainer, "_step", record)
    train(synthetic_cases(2), [], config(tiny_model, epochs=2, lr=1e-3, warmup_steps=4),
          tmp_path / "m.safetensors")  # 2 epochs of 3 steps
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_fine_tuning_refuses_another_preprocessing_than_its_start(tiny_model, tmp_path):
    cases = synthetic_cases(2)
    base = train(cases, [], config(tiny_model, epochs=1), tmp_path / "base.safetensors")
    with pytest.raises(CheckpointError, match="expects the 'physical' preprocessing"):
        train(cases, [], config(tiny_model, epochs=1, preprocessing="legacy"),
              tmp_path / "tuned.safetensors", init=base.checkpoint)


def test_stop_mid_epoch_keeps_the_last_completed_epoch(tiny_model, tmp_path):
    out = tmp_path / "m.safetensors"
    steps = []

    def cancel():
        return len(steps) >= 4  # during epoch 2 (3 steps per epoch)

    cases = synthetic_cases(2)
    result = train(cases[:1], cases[1:], config(tiny_model, epochs=3), out,
                   progress=lambda done, total: steps.append(done), cancel=cancel)
    assert result.stop_reason == "cancelled" and result.epochs_completed == 1
    assert "Stopped during epoch 2" in result.message and "epoch 1" in result.message
    assert load_checkpoint(out)[1]["training"]["epoch"] == 1
    assert read_state(state_path(out))[2]["epoch"] == 1


def test_stop_before_the_first_epoch_saves_nothing(tiny_model, tmp_path):
    result = train(synthetic_cases(2), [], config(tiny_model), tmp_path / "m.safetensors",
                   cancel=lambda: True)
    assert result.checkpoint is None and "no model was saved" in result.message
    assert not (tmp_path / "m.safetensors").exists()


def test_write_failure_keeps_the_previous_files_intact(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    cases = synthetic_cases(2)
    train(cases, [], config(tiny_model, epochs=1), out)
    before = out.read_bytes(), state_path(out).read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left.*previous m.state.safetensors is unchanged"):
        train(cases, [], config(tiny_model, epochs=2), out, resume=True)
    assert state_path(out).read_bytes() == before[1]
    assert read_state(state_path(out))[2]["epoch"] == 1
    load_checkpoint(out)  # still a whole, loadable checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.state.safetensors"]


def test_early_stopping_keeps_the_best_epoch(tiny_model, tmp_path, monkeypatch):
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.7, 0.9])  # epoch 2 is best, then 2 epochs without gain
    monkeypatch.setattr(engine._Trainer, "_validate", lambda self, cancel: (s := next(scores), s))
    out = tmp_path / "m.safetensors"
    cases = synthetic_cases(2)
    result = train(cases[:1], cases[1:], config(tiny_model, epochs=6, patience=2,
                                                 steps_per_epoch=1), out)
    assert result.stop_reason == "early-stopped" and "no better validation DSC" in result.message
    assert result.epochs_completed == 4 and result.best_epoch == 2
    assert [m.saved for m in result.history] == [True, True, False, False]
    assert load_checkpoint(out)[1]["training"]["epoch"] == 2


@pytest.mark.parametrize("change, message", [
    ({"loss": "bce"}, "unknown loss"), ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"input_size": 100}, "multiple of 16"), ({"crop_size": 48}, "crop size"), ({"lr": 0.0}, "learning rate"),
    ({"model": "nope"}, "unknown model"), ({"train_layers": "encoder"}, "unknown train layers"),
    ({"warmup_steps": -1}, "warm-up")])
def test_bad_options_are_refused_with_a_clear_message(change, message, tmp_path):
    with pytest.raises(InputError, match=message):
        train(synthetic_cases(1), [], config(**{"model": "dunet", **change}), tmp_path / "m.safetensors")


def test_focal_and_dice_losses_train_too(tiny_model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for loss in ("focal", "dice"):
            result = train(synthetic_cases(1), [], config(tiny_model, epochs=1, loss=loss),
                           tmp_path / f"{loss}.safetensors")
            assert np.isfinite(result.history[0].train_loss)
            assert load_checkpoint(result.checkpoint)[1]["training"]["config"]["loss"] == loss


def test_torch_free_defaults_match_the_core():
    from napari_dunet.models import DEFAULT_MODEL
    from napari_dunet.preprocessing import INPUT_SIZE

    assert (TrainConfig().model, TrainConfig().input_size) == (DEFAULT_MODEL, INPUT_SIZE)


def test_bf16_training_on_cpu_stays_finite(tiny_model, tmp_path):
    """bf16 autocast on the CPU: the 3D stream runs in float32 (oneDNN's bf16 Conv3d weight
    gradient is non-finite for these shapes), so the loss stays finite and the model learns."""
    cases = synthetic_cases(3)
    result = train(cases[:2], cases[2:], config(tiny_model, epochs=2, precision="bf16"),
                   tmp_path / "m.safetensors")
    assert result.stop_reason == "completed"
    assert all(math.isfinite(m.train_loss) for m in result.history)
    model, _ = load_checkpoint(result.checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- checked fine-tuning -----------------------------------------------------------------------
def base_checkpoint(model, path, trained_on=None):
    """A starting checkpoint with the thresholds of the shipped weights' kind."""
    from napari_dunet.checkpoint import default_metadata, save_checkpoint
    from napari_dunet.models import build_model

    torch.manual_seed(0)
    net = build_model(model)
    if trained_on is not None:
        net = load_checkpoint(train(trained_on, [], config(model, epochs=1),
                                    path.with_name("pre.safetensors")).checkpoint)[0]
    return save_checkpoint(path, net, default_metadata(model, threshold=0.4, seed_threshold=0.6))


def test_hold_back_keeps_blocks_of_slices_of_few_cases_and_whole_cases_of_many():
    from napari_dunet.training.data import HOLD_BACK_BLOCK, MAX_HELD_BACK_SLICES, hold_back

    image, mask = make_head((40, 48, 24))
    case = prepare_case(image, mask, AFFINE, "one", input_size=SIZE)
    (train_part,), (held,) = hold_back([case], 0.2)
    assert not (train_part.head & held.head).any()  # nothing is both trained and checked on
    assert np.array_equal(train_part.head | held.head, case.head)
    assert held.lesion.any() and train_part.lesion.any()
    slices = np.flatnonzero(held.head)
    runs = np.split(slices, np.flatnonzero(np.diff(slices) > 1) + 1)
    assert all(len(run) <= HOLD_BACK_BLOCK for run in runs) and len(runs) >= 2
    assert 0.1 <= held.head.sum() / case.head.sum() <= 0.3
    sampler = BalancedSampler([train_part], batch_size=8)
    picks = np.concatenate(sampler.batches(50, np.random.default_rng(0)))
    assert not held.head[picks[:, 1]].any()  # training never draws a held-back slice
    cases = synthetic_cases(5)
    train_cases, val_cases = hold_back(cases, 0.2)
    assert len(val_cases) == 1 and len(train_cases) == 4  # a whole case is held back
    assert val_cases[0].name not in {c.name for c in train_cases}
    assert all(c.use is None for c in train_cases)
    big = [prepare_case(*make_head((40, 48, 40), seed=i), AFFINE, f"big{i}", input_size=SIZE)
           for i in range(4)]  # 120 slices each
    (checked,) = hold_back(big, 0.25)[1]
    assert checked.head.sum() == MAX_HELD_BACK_SLICES < big[0].head.sum()  # a check stays short
    assert checked.lesion.any() and (checked.head & ~checked.lesion).any()


def test_a_fine_tune_that_cannot_improve_keeps_the_starting_weights(tiny_model, tmp_path):
    from napari_dunet.training.data import hold_back
    from napari_dunet.training.engine import StartScore

    cases = synthetic_cases(2)
    base = base_checkpoint(tiny_model, tmp_path / "base.safetensors", trained_on=cases)
    train_cases, val_cases = hold_back(cases, 0.2)
    out = tmp_path / "tuned.safetensors"
    events = list(_events(training_events(
        train_cases, val_cases, config(tiny_model, lr=1e-12, freeze_norm=True), out, init=base)))
    result = events[-1]
    assert isinstance(events[0], StartScore)  # scored before any step
    assert result.start_val_dsc == events[0].val_dsc == result.best_val_dsc
    assert [m.val_dsc for m in result.history] == [result.start_val_dsc] * 2  # no gain
    assert result.checkpoint is None and not result.improved and not out.exists()
    assert "Kept the starting weights" in result.message and "not written" in result.message


def test_a_fine_tune_that_improves_is_saved_with_the_starting_thresholds(tiny_model, tmp_path,
                                                                        monkeypatch):
    from napari_dunet.io import Volume
    from napari_dunet.training.engine import drive
    from napari_dunet.training.finetune import CorrectedCase, fine_tune_events

    scores = iter([0.2, 0.3, 0.5, 0.4])  # the start, then epochs 1-3: epoch 2 is best
    seen = []

    def validate(self, cancel):
        seen.append(dict(self.thresholds))
        return (s := next(scores)), s

    monkeypatch.setattr(engine._Trainer, "_validate", validate)
    base = base_checkpoint(tiny_model, tmp_path / "base.safetensors")
    heads = [make_head(shape, seed=i) for i, shape in enumerate(SHAPES[:2])]
    pairs = [CorrectedCase(f"c{i}", Volume(image, AFFINE), mask)
             for i, (image, mask) in enumerate(heads)]
    out = tmp_path / "tuned.safetensors"
    result = drive(fine_tune_events(pairs, config(tiny_model, epochs=3), out, base,
                                    hold_back=0.2))
    assert result.checkpoint == out and result.improved and result.best_epoch == 2
    assert [m.saved for m in result.history] == [True, True, False]
    assert "0.500, 0.200 at the start" in result.message
    assert seen == [{"threshold": 0.4, "seed_threshold": 0.6}] * 4  # checked as it segments
    meta = read_metadata(out)
    assert (meta["threshold"], meta["seed_threshold"]) == (0.4, 0.6)  # kept from the start
    assert meta["training"]["start_val_dsc"] == 0.2 and meta["training"]["epoch"] == 2
    assert meta["training"]["cases"] == {"train": 2, "validation": 2}  # slices of both


def test_a_fine_tune_replaces_its_start_only_with_a_gain_above_chance(tiny_model, tmp_path,
                                                                      monkeypatch):
    from napari_dunet.training.data import hold_back

    cases = synthetic_cases(2)
    base = base_checkpoint(tiny_model, tmp_path / "base.safetensors", trained_on=cases)
    scores = iter([0.5, 0.505, 0.52, 0.521])  # the start, then epochs 1-3
    monkeypatch.setattr(engine._Trainer, "_validate", lambda self, cancel: (s := next(scores), s))
    out = tmp_path / "tuned.safetensors"
    result = engine.train(*hold_back(cases, 0.2), config(tiny_model, epochs=3, min_gain=0.01),
                          out, init=base)
    assert [m.saved for m in result.history] == [False, True, True]  # +0.005 is not enough
    assert result.best_epoch == 3 and read_metadata(out)["training"]["epoch"] == 3
    with pytest.raises(InputError, match="least gain"):
        config(tiny_model, min_gain=1.0).check()


def test_stop_while_preparing_is_answered_at_once(tiny_model, tmp_path, monkeypatch):
    import threading
    import time

    from napari_dunet.training import data
    from napari_dunet.training.engine import drive
    from napari_dunet.training.finetune import CorrectedCase, fine_tune_events
    from napari_dunet.io import Volume

    release = threading.Event()
    monkeypatch.setattr(data, "prepare_case", lambda *a, **k: release.wait(60))  # a slow case
    image, mask = make_head()
    stop_at = time.monotonic() + 0.3
    started = time.monotonic()
    try:
        result = drive(fine_tune_events([CorrectedCase("c", Volume(image, AFFINE), mask)],
                                        config(tiny_model), tmp_path / "m.safetensors", None,
                                        hold_back=0.2, cancel=lambda: time.monotonic() > stop_at))
    finally:
        release.set()
    assert time.monotonic() - started < 10  # not the minute the preparation would have taken
    assert result.stop_reason == "cancelled" and "while preparing" in result.message
    assert result.checkpoint is None and not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("phase", ["__init__", "_validate", "_step"])
def test_stop_is_answered_at_once_in_every_phase(tiny_model, tmp_path, monkeypatch, phase):
    """Setting up, scoring the start, training: a stop does not wait for the work in hand."""
    import threading
    import time

    from napari_dunet.training.data import hold_back

    cases = synthetic_cases(2)
    base = base_checkpoint(tiny_model, tmp_path / "base.safetensors")
    release, original = threading.Event(), getattr(engine._Trainer, phase)

    stop_at = []

    def slow(self, *args):
        stop_at.append(time.monotonic() + 0.2)  # stop while this phase is in hand
        release.wait(60)
        return original(self, *args)

    monkeypatch.setattr(engine._Trainer, phase, slow)
    try:
        result = drive_events(training_events(
            *hold_back(cases, 0.2), config(tiny_model), tmp_path / "m.safetensors", init=base,
            cancel=lambda: bool(stop_at) and time.monotonic() > stop_at[0]))
        answered = time.monotonic() - stop_at[0]
    finally:
        release.set()
    assert answered < 10  # not the minute the work in hand would have taken
    assert result.stop_reason == "cancelled" and result.checkpoint is None


def drive_events(generator):
    return list(_events(generator))[-1]
