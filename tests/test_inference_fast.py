"""The optimised inference path gives the plain path's masks, does less work, and leaves the
caller's model alone."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from napari_dunet.errors import Cancelled, DunetError
from napari_dunet.fast import fold_batchnorm, prepare_model
from napari_dunet.inference import predict_volume, prefetch
from napari_dunet.io import Volume
from napari_dunet.metrics import confusion, dice
from napari_dunet.models import build_model

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
    plain = predict_volume(volume, model, device="cpu", optimize=False)
    seen = []
    hook = prepare_model(model, "cpu").register_forward_pre_hook(
        lambda _, args: seen.append(len(args[0])))
    calls = []
    try:
        fast = predict_volume(volume, model, device="cpu", batch_size=4,
                              progress=lambda done, total: calls.append((done, total)))
    finally:
        hook.remove()
    assert fast.shape == plain.shape == volume.data.shape and fast.dtype == np.float32
    assert plain.std() > 0
    assert agreement(plain, fast) >= 0.999
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    # slices 0-1 and 11 have no head slice in their stacks: one all-zero stack stands for them
    assert sum(seen) == 12 - 3 + 1
    assert calls[0] == (3, 12) and calls[-1] == (12, 12)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("codes", ["LPI", "PIR"])
def test_slice_range_reads_and_writes_only_its_slices(model, codes):
    volume = head_volume(codes)
    full = predict_volume(volume, model, device="cpu", slice_range=(3, 7))
    part = predict_volume(volume, model, device="cpu", slice_range=(4, 6))
    plain = predict_volume(volume, model, device="cpu", slice_range=(4, 6), optimize=False)
    np.testing.assert_allclose(part, plain, atol=1e-4)
    np.testing.assert_array_equal(part == 0, plain == 0)  # the same voxels are left empty
    # the stacks of slices 4-5 read slices 2..6, so a larger range gives the same maps there
    inside = plain != 0
    np.testing.assert_allclose(part[inside], full[inside], atol=1e-4)


def test_cancel_and_progress_with_skipped_stacks(model):
    volume = head_volume("RAS")
    seen = []
    with pytest.raises(Cancelled):
        predict_volume(volume, model, device="cpu", batch_size=2,
                       progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 2)
    assert seen == [3, 5]  # the empty stacks, then one batch of two


def test_bf16_runs_close_to_fp32(model):
    volume = head_volume("RAS")
    fp32 = predict_volume(volume, model, device="cpu", slice_range=(4, 6))
    bf16 = predict_volume(volume, model, device="cpu", slice_range=(4, 6), precision="bf16")
    assert bf16.dtype == np.float32
    # bf16 rounds every layer's inputs (the output layer stays fp32): close, not equal
    assert np.abs(bf16 - fp32).max() < 0.01 and agreement(fp32, bf16) > 0.99
    with pytest.raises(DunetError, match="precision"):
        predict_volume(volume, model, device="cpu", precision="fp8")


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
