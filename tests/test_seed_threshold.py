"""Seeded thresholding (hysteresis): a confident lesion keeps its less certain rim, a region
with no confident voxel is dropped; the checkpoint recommends both thresholds."""

import numpy as np
import pytest

from napari_dunet import inference
from napari_dunet.io import Volume
from napari_dunet.options import SegmentOptions
from napari_dunet.segmentation import segment, threshold_mask


def two_regions() -> np.ndarray:
    """A lesion (core 0.995, rim 0.75) and, apart from it, a faint spot (0.9 at most)."""
    p = np.zeros((20, 20, 10), np.float32)
    p[2:10, 2:10, 2:8] = 0.75
    p[4:8, 4:8, 4:6] = 0.995
    p[14:18, 14:18, 3:6] = 0.8
    p[15, 15, 4] = 0.9
    return p


def test_regions_without_a_seed_are_dropped_and_seeded_ones_kept_whole():
    p = two_regions()
    mask = threshold_mask(p, 0.7, 0.99)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[:12], (p >= 0.7)[:12])  # the lesion, rim and all
    assert not mask[12:].any()  # the faint spot
    np.testing.assert_array_equal(threshold_mask(p, 0.7, 0.85), p >= 0.7)  # 0.9 seeds it
    for off in (None, 0.0, 0.7, 0.5):  # no seed, or one at or below the threshold: plain
        np.testing.assert_array_equal(threshold_mask(p, 0.7, off), p >= 0.7)


def test_regions_touching_only_at_an_edge_are_separate():
    p = np.zeros((6, 6, 3), np.float32)
    p[1, 1, 1], p[2, 2, 1] = 0.995, 0.8  # diagonal neighbours: not 6-connected
    mask = threshold_mask(p, 0.7, 0.99)
    assert mask[1, 1, 1] == 1 and mask[2, 2, 1] == 0


@pytest.fixture
def fixed_map(monkeypatch):
    """The network's map is ``two_regions()``; records the options each run predicts with."""
    asked = []

    def predict(volume, model, options, **_):
        asked.append(options)
        return two_regions()

    monkeypatch.setattr(inference, "predict_volume", predict)
    return asked


def test_segment_takes_the_checkpoints_seed_unless_the_options_give_one(fixed_map):
    volume = Volume(np.ones((20, 20, 10), np.float32), np.eye(4))
    p = two_regions()
    meta = {"model": "dunet", "threshold": 0.7, "seed_threshold": 0.99}
    result = segment(volume, None, meta, SegmentOptions(device="cpu"))
    assert (result.threshold, result.seed_threshold) == (0.7, 0.99)
    assert fixed_map[-1].seed_threshold == 0.99  # mixed precision checks the seed's voxels too
    np.testing.assert_array_equal(result.mask, threshold_mask(p, 0.7, 0.99))
    assert result.lesion_ml == pytest.approx(8 * 8 * 6 / 1000)
    plain = segment(volume, None, meta, SegmentOptions(device="cpu", seed_threshold=0))
    assert plain.seed_threshold is None and fixed_map[-1].seed_threshold is None
    np.testing.assert_array_equal(plain.mask, p >= 0.7)
    above = segment(volume, None, meta, SegmentOptions(device="cpu", threshold=0.995))
    assert above.seed_threshold is None  # a threshold above the seed: plain at the threshold
    older = segment(volume, None, {"model": "dunet", "threshold": 0.7},
                    SegmentOptions(device="cpu"))  # a checkpoint from before seeds: plain
    assert older.seed_threshold is None and np.array_equal(older.mask, p >= 0.7)


def test_a_seed_threshold_outside_0_to_1_is_refused():
    from napari_dunet.errors import InputError

    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(InputError, match="seed threshold"):
            SegmentOptions(seed_threshold=bad).check()


def tube() -> np.ndarray:
    """A lesion running along the axial axis through slices 2..25 of 30 (0.75), seeded (0.995)
    only in slice 24, and a faint region (0.8, no seed) through slices 5..16."""
    p = np.zeros((20, 20, 30), np.float32)
    p[2:8, 2:8, 2:26] = 0.75
    p[4:6, 4:6, 24] = 0.995
    p[12:18, 12:18, 5:17] = 0.8
    return p


@pytest.fixture
def tube_network(monkeypatch):
    """The network's map is ``tube()``, on the slices a run asks for (zero elsewhere, as
    ``predict_volume`` gives); records the slice ranges run."""
    ran = []

    def predict(volume, model, options, **_):
        ran.append(options.slice_range)
        start, stop = options.slice_range or (0, 30)
        p = np.zeros((20, 20, 30), np.float32)
        p[..., start:stop] = tube()[..., start:stop]
        return p

    monkeypatch.setattr(inference, "predict_volume", predict)
    return ran


def test_a_current_slice_is_masked_as_the_whole_volume_masks_it(tube_network):
    from napari_dunet.segmentation import segment_slice, slice_mask

    volume = Volume(np.ones((20, 20, 30), np.float32), np.eye(4))
    meta = {"model": "dunet", "threshold": 0.7, "seed_threshold": 0.99}
    whole = segment(volume, None, meta, SegmentOptions(device="cpu")).mask
    assert whole[..., 3].sum() == 36 and not whole[..., 10][12:].any()  # seeded 21 slices away
    for z in (3, 10, 28):
        tube_network.clear()
        one = segment_slice(volume, None, meta, SegmentOptions(device="cpu"), z)
        np.testing.assert_array_equal(one.mask[..., z], whole[..., z])
        assert not np.delete(one.mask, z, axis=2).any()  # the slice alone
        assert one.slice_range == (z, z + 1) and one.lesion_ml == pytest.approx(
            whole[..., z].sum() / 1000)
        ran = sorted(tube_network)  # each slice run once
        assert sum(b - a for a, b in ran) == one.context[1] - one.context[0]
    # slice 28 crosses no region: its neighbourhood alone decides it
    assert one.context[0] > 24 and one.context[1] == 30
    # a narrower neighbourhood cannot decide slice 3, and says so
    seeded = segment_slice(volume, None, meta, SegmentOptions(device="cpu"), 3)
    assert seeded.context[1] > 24
    assert slice_mask(seeded.probability, volume, 3, (0, 8), 0.7, 0.99) is None
    np.testing.assert_array_equal(
        slice_mask(seeded.probability, volume, 3, seeded.context, 0.7, 0.99), seeded.mask)
    # the map of an earlier run is reused: no slice runs twice
    tube_network.clear()
    again = segment_slice(volume, None, meta, SegmentOptions(device="cpu", threshold=0.78), 3,
                          known=(seeded.probability, seeded.context))
    assert tube_network == [] and not again.mask.any()  # 0.75 is below 0.78
    tube_network.clear()
    from_whole = segment_slice(volume, None, meta, SegmentOptions(device="cpu"), 10,
                               known=(tube(), (0, 30)))
    assert tube_network == [] and np.array_equal(from_whole.mask[..., 10], whole[..., 10])
