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
