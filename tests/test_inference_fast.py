"""The optimised inference path gives the plain path's masks, does less work, and leaves the
caller's model alone."""

from __future__ import annotations

import json
import threading
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from napari_dunet.errors import Cancelled, DunetError
from napari_dunet.fast import fold_batchnorm, prepare_model
from napari_dunet.inference import (predict_slices, predict_volume, prefetch, prepare_network,
                                    resolve_precision)
from napari_dunet.io import Volume
from napari_dunet.metrics import confusion, dice
from napari_dunet.models import build_model
from napari_dunet.options import SegmentOptions
from napari_dunet.preprocessing import make_stacks, preprocess

from conftest import make_head


def head_volume(codes: str, shape=(40, 48, 12), head=(3, 9)) -> Volume:
    """A T1-like head in axial slices ``head[0]..head[1]-1`` (exact zeros elsewhere), stored in
    the orientation ``codes`` so that the axial axis is flipped or permuted."""
    image, _ = make_head(shape)
    image[..., :head[0]] = 0
    image[..., head[1]:] = 0
    ras = nib.Nifti1Image(image, np.diag([1.0, 1.0, 3.0, 1.0]))
    target = nib.orientations.axcodes2ornt(codes)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(ras.affine), target)
    data = nib.orientations.apply_orientation(image, transform)
    affine = ras.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    return Volume(np.ascontiguousarray(data), affine, nib.Nifti1Header())


def n_empty_stacks(volume: Volume) -> int:
    """Stacks of the network's slices with no non-zero voxel."""
    geometry, normalized = preprocess(volume.data, volume.affine)
    slices = geometry.forward(normalized)
    return int((~make_stacks(slices, range(len(slices))).flatten(1).any(dim=1)).sum())


def agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """DSC of the two maps thresholded at the reference's median over the voxels it varies on:
    half of the informative voxels are 'lesion', so every flip near the threshold counts."""
    threshold = float(np.median(reference[reference > 0]))
    return dice(confusion(reference >= threshold, other >= threshold))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(1)
    return build_model("dunet").eval()


@pytest.mark.parametrize("name", ["dunet", "unet2d-original", "unet3d-transform"])
def test_prepared_copy_computes_the_same_function(name):
    torch.manual_seed(0)
    model = build_model(name)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 4, 64, 64)
    prepared = prepare_model(model, "cpu")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in prepared.modules())
    assert model.training and has_bn == (name != "unet2d-original")  # the caller's model as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.inference_mode():
        expected = model.eval()(x)
        got = prepared(x.contiguous(memory_format=torch.channels_last))
        single = prepared(x[1:])  # one stack: the case PyTorch alone would run slowly
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(single, expected[1:], atol=2e-5, rtol=1e-4)


def test_prepared_copy_follows_weight_changes(model):
    first = prepare_model(model, "cpu")
    assert prepare_model(model, "cpu") is first  # cached while the weights stay the same
    original = model.head.bias.detach().clone()
    try:
        with torch.no_grad():
            model.head.bias.add_(3.0)  # what an optimiser step does: an in-place update
        second = prepare_model(model, "cpu")
        assert second is not first
        torch.testing.assert_close(second.head.bias, model.head.bias)
        assert second.head.full_precision  # the output layer stays fp32 under bf16 autocast
    finally:
        with torch.no_grad():
            model.head.bias.copy_(original)


def test_fold_counts_every_conv_batchnorm_pair():
    assert fold_batchnorm(build_model("dunet")) == 2 * (5 + 4 + 3)  # encoder, decoder, 3D stream


def test_optimised_masks_equal_the_plain_ones_and_skip_empty_stacks(model):
    volume = head_volume("PIR")  # axial axis in the middle and flipped
    plain = predict_volume(volume, model, SegmentOptions(device="cpu", optimize=False))
    seen = []
    hook = prepare_network(model, torch.device("cpu"), "auto", 36).register_forward_pre_hook(
        lambda _, args: seen.append(len(args[0])))
    calls = []
    try:
        fast = predict_volume(volume, model, SegmentOptions(device="cpu", batch_size=4,
                                                            precision="fp32"),
                              progress=lambda done, total: calls.append((done, total)))
    finally:
        hook.remove()
    assert fast.shape == plain.shape == volume.data.shape and fast.dtype == np.float32
    assert plain.std() > 0
    assert agreement(plain, fast) >= 0.999
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    # stacks with no head voxel (3 mm slices split in three) run once, as one all-zero stack;
    # every stack run runs again mirrored (the default)
    empty = n_empty_stacks(volume)
    assert 0 < empty < 36 and sum(seen) == 2 * (36 - empty + 1)
    assert calls[0] == (empty, 36) and calls[-1] == (36, 36)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("codes", ["LPI", "PIR"])
def test_slice_range_reads_and_writes_only_its_slices(model, codes):
    volume = head_volume(codes)
    full = predict_volume(volume, model, SegmentOptions(device="cpu", slice_range=(3, 7)))
    part = predict_volume(volume, model, SegmentOptions(device="cpu", slice_range=(4, 6)))
    plain = predict_volume(volume, model,
                           SegmentOptions(device="cpu", slice_range=(4, 6), optimize=False))
    np.testing.assert_allclose(part, plain, atol=1e-4)
    np.testing.assert_array_equal(part == 0, plain == 0)  # the same voxels are left empty
    # the stacks of slices 4-5 read slices 2..6, so a larger range gives the same maps there
    inside = plain != 0
    np.testing.assert_allclose(part[inside], full[inside], atol=1e-4)


def test_cancel_and_progress_with_skipped_stacks(model):
    volume = head_volume("RAS")
    seen = []
    with pytest.raises(Cancelled):
        predict_volume(volume, model, SegmentOptions(device="cpu", batch_size=2),
                       progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 2)
    empty = n_empty_stacks(volume)
    assert seen == [empty, empty + 2]  # the empty stacks, then one batch of two


def test_bf16_runs_close_to_fp32(model):
    volume = head_volume("RAS")
    # one stack, one pass: a CPU without bf16 instructions emulates it (~150 s a stack on AVX2)
    run = dict(device="cpu", slice_range=(5, 6), mirror=False)
    fp32 = predict_volume(volume, model, SegmentOptions(**run))
    bf16 = predict_volume(volume, model, SegmentOptions(precision="bf16", **run))
    assert bf16.dtype == np.float32
    # bf16 rounds every layer's inputs (the output layer stays fp32): close, not equal
    assert np.abs(bf16 - fp32).max() < 0.01 and agreement(fp32, bf16) > 0.99
    with pytest.raises(DunetError, match="precision"):
        predict_volume(volume, model, SegmentOptions(device="cpu", precision="fp8"))


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch):
    """``--dtype bf16`` on such a CPU would run for hours without a word (a stack of the
    bundled network: about 150 s, against 1 s in fp32, on a 2-core AVX2 AMD EPYC)."""
    from napari_dunet import fast

    cpu, network = torch.device("cpu"), Echo()
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: False)
    for precision in ("bf16", "mixed"):
        with pytest.warns(RuntimeWarning, match="no bf16 instructions: .*emulated"):
            assert resolve_precision(precision, cpu, 1, network) == precision
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("auto", cpu, 1, network) == "fp32"
        assert resolve_precision("fp32", cpu, 1, network) == "fp32"
        network.runtime = "openvino"  # OpenVINO chooses its own kernels
        assert resolve_precision("bf16", cpu, 1, network) == "bf16"
        monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: True)
        assert resolve_precision("bf16", cpu, 1, Echo()) == "bf16"


class Echo(nn.Module):
    """A 'network' whose map is its input's second slice (through a 1x1 convolution, so that
    bf16 autocast rounds it); records the precision of every stack it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]).reshape(1, 4, 1, 1))
        self.seen: list[tuple[str, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(("bf16" if torch.is_autocast_enabled("cpu") else "fp32", len(x)))
        return self.conv(x)


def test_mixed_reruns_stacks_near_the_threshold_in_fp32():
    # batch of 4: stacks 0-3 far from 0.5 except stack 1; stacks 4-7 all near it; 8-11 far again
    values = [0.1, 0.52, 0.9, 0.05, 0.49, 0.45, 0.58, 0.5, 0.2, 0.95, 0.0, 0.3337]
    stacks = torch.tensor(values).reshape(-1, 1, 1, 1).expand(-1, 4, 8, 8).contiguous()
    model = Echo()
    probs = predict_slices(model, stacks, torch.device("cpu"), 4, precision="mixed")
    # batch 1: bf16, then stack 1 again in fp32; batch 2: bf16, all four again; batch 3: bf16
    assert model.seen == [("bf16", 4), ("fp32", 1), ("bf16", 4), ("fp32", 4), ("bf16", 4)]
    fp32 = torch.tensor(values)[:, None, None].expand(-1, 8, 8)
    near = (fp32 - 0.5).abs() < 0.12  # within MIXED_LOGIT_MARGIN (0.378-0.622)
    assert torch.equal(probs[near], fp32[near])  # the stacks near the threshold are exact
    assert not torch.equal(probs[0], fp32[0])  # the others came from bf16: close, not equal
    torch.testing.assert_close(probs, fp32, atol=2e-3, rtol=0)
    model.seen.clear()  # the check follows the threshold it is given
    predict_slices(model, stacks[8:], torch.device("cpu"), 4, precision="mixed",
                   thresholds=(0.3,))
    assert model.seen == [("bf16", 4), ("fp32", 1)]
    model.seen.clear()  # and a seed threshold's too: stack 9 (0.95) is near a seed of 0.96
    predict_slices(model, stacks[8:], torch.device("cpu"), 4, precision="mixed",
                   thresholds=(0.3, 0.96))
    assert model.seen == [("bf16", 4), ("fp32", 2)]


def test_auto_precision_is_chosen_by_measurement_and_remembered(monkeypatch, tmp_path):
    from napari_dunet import cpu_dtype

    cpu, model = torch.device("cpu"), nn.Identity()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: True)
    timings = iter([(1.0, 1.3), (1.0, 0.5)])  # a Xeon whose bf16 is slower, then a faster one
    measured = []
    monkeypatch.setattr(cpu_dtype, "time_dtypes",
                        lambda m, size=192: measured.append(1) or next(timings))
    assert resolve_precision("auto", cpu, 189, model) == "fp32"
    assert resolve_precision("auto", cpu, 189, model) == "fp32" and len(measured) == 1  # cached
    (cached,) = json.loads(cpu_dtype.cache_file().read_text()).values()
    assert cached["fp32_seconds"] == 1.0 and cached["bf16_seconds"] == 1.3
    monkeypatch.setattr(cpu_dtype, "machine_key", lambda m: "another CPU")  # new CPU or torch
    assert resolve_precision("auto", cpu, 189, model) == "mixed" and len(measured) == 2
    assert resolve_precision("auto", cpu, 1, model) == "fp32"  # the current slice: no rerun to risk
    assert resolve_precision("auto", torch.device("cuda"), 189, model) == "auto"  # GPU autocast
    assert resolve_precision("bf16", cpu, 189, model) == "bf16"  # --dtype forces one
    monkeypatch.setattr(cpu_dtype, "cpu_has_native_bf16", lambda: False)  # emulated bf16
    assert resolve_precision("auto", cpu, 189, model) == "fp32" and len(measured) == 2


def test_dtype_measurement_times_both_dtypes_on_the_network():
    from napari_dunet import cpu_dtype
    from napari_dunet.fast import prepare_model
    from napari_dunet.models import build_model

    fp32, bf16 = cpu_dtype.time_dtypes(prepare_model(build_model("dunet"), torch.device("cpu")),
                                       input_size=32)  # 64 took a minute where bf16 is emulated
    assert 0 < fp32 < 60 and 0 < bf16 < 60


@pytest.mark.slow
def test_mixed_precision_keeps_the_fp32_mask_of_the_bundled_weights():
    """The default CPU path on a real scan with a lesion: the bundled weights on the napari
    sample, over slices that hold the lesion's upper edge and slices above it."""
    from napari_dunet._sample_data import SAMPLE_IMAGE
    from napari_dunet.checkpoint import load_checkpoint
    from napari_dunet.io import load_volume
    from napari_dunet.weights import default_checkpoint

    model = load_checkpoint(default_checkpoint())[0]
    volume = load_volume(SAMPLE_IMAGE)
    run = dict(device="cpu", slice_range=(56, 88), batch_size=8)  # lesion up to slice 68
    naive = predict_volume(volume, model, SegmentOptions(precision="fp32", optimize=False, **run))
    mixed = predict_volume(volume, model, SegmentOptions(precision="mixed", **run))
    assert (naive >= 0.5).sum() > 100  # lesion in these slices
    np.testing.assert_array_equal(mixed >= 0.5, naive >= 0.5)
    assert 0 < np.abs(mixed - naive).max() < 0.1  # some slices ran in bf16


def test_prefetch_reads_ahead_in_order_and_passes_errors_on():
    second_loading = threading.Event()

    def load(item: int) -> int:
        if item == 1:
            second_loading.set()
        if item == 2:
            raise ValueError("unreadable")
        return item * 10

    results = []
    for item, result in prefetch(range(4), load, depth=2):
        if item == 0:  # the next scan is read while this one is being worked on
            assert second_loading.wait(timeout=30)
        results.append((item, result if not isinstance(result, Exception) else str(result)))
    assert results == [(0, 0), (1, 10), (2, "unreadable"), (3, 30)]
