"""predict_volume: native-grid output, slice ranges, progress and cancel."""

import numpy as np
import pytest
import torch

from napari_dunet.checkpoint import load_checkpoint
from napari_dunet.errors import Cancelled, DunetError
from napari_dunet.inference import predict_volume, resolve_device
from napari_dunet.io import Volume, load_volume
from napari_dunet.options import SegmentOptions


@pytest.fixture(scope="module")
def model(random_checkpoint):
    return load_checkpoint(random_checkpoint)[0]


def test_probabilities_on_the_native_grid(small_nifti, model):
    volume = load_volume(small_nifti[0])
    calls = []
    prob = predict_volume(volume, model, SegmentOptions(device="cpu", batch_size=5),
                          progress=lambda done, total: calls.append((done, total)))
    assert prob.shape == volume.data.shape and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1 and prob.std() > 0
    # 12 slices of 3 mm, each split into three ~1 mm network slices, in batches of 5
    assert calls[-1] == (36, 36) and [d for d, _ in calls] == [*range(5, 36, 5), 36]


def test_slice_range_leaves_other_slices_empty(small_nifti, model):
    volume = load_volume(small_nifti[0])
    full = predict_volume(volume, model, SegmentOptions(device="cpu"))
    part = predict_volume(volume, model, SegmentOptions(device="cpu", slice_range=(4, 6)))
    assert part[:, :, :4].max() == 0 and part[:, :, 6:].max() == 0
    np.testing.assert_allclose(part[:, :, 4:6], full[:, :, 4:6], atol=1e-5)


def test_cancel_stops_the_run(small_nifti, model):
    volume = load_volume(small_nifti[0])
    seen = []
    with pytest.raises(Cancelled):
        predict_volume(volume, model, SegmentOptions(device="cpu", batch_size=2),
                       progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 1)
    assert seen == [2]


def test_bad_slice_range(small_nifti, model):
    with pytest.raises(DunetError, match="slice range"):
        predict_volume(load_volume(small_nifti[0]), model,
                       SegmentOptions(device="cpu", slice_range=(5, 40)))


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(DunetError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(DunetError, match="Unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("mirror", [True, False])
def test_a_mirrored_scan_gives_the_mirrored_map(small_nifti, model, mirror):
    """With the mirrored pass (the default) a lesion gets the same probability in either
    hemisphere: the map of a left-right mirrored scan is the mirrored map. Without it an
    untrained network's maps are not."""
    loaded = load_volume(small_nifti[0])
    assert np.allclose(loaded.affine[:3, :3], np.diag(np.diag(loaded.affine[:3, :3])))
    # an odd width: the head is found on every other voxel, the same ones in both scans
    volume = Volume(np.pad(loaded.data, ((0, 1), (0, 0), (0, 0))), loaded.affine)
    mirrored = Volume(volume.data[::-1].copy(), volume.affine)
    options = SegmentOptions(device="cpu", mirror=mirror)
    prob = predict_volume(volume, model, options)
    prob_of_mirrored = predict_volume(mirrored, model, options)
    difference = np.abs(prob_of_mirrored[::-1] - prob).max()
    assert (difference < 1e-5) if mirror else (difference > 1e-3)
