"""The carved real-T1 check (benchmarks/carve.py): real anatomy, a lesion carved in as tissue loss."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dunet import synth
from napari_dunet.io import load_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import carve  # noqa: E402


@pytest.fixture(scope="module")
def anatomy(shared_data):
    t1 = load_volume(shared_data / "real" / "ms_t1" / "patient26" / "T1w.nii.gz")
    t1.data = np.clip(t1.data.astype(np.float32), 0, None)
    return synth.anatomy_from_t1(t1)


@pytest.fixture(scope="module")
def lesion(shared_data):
    return load_volume(shared_data / "lesions" / "Subject_084.nii.gz")


def test_carved_lesion_is_a_csf_dark_cavity_made_of_the_scan_s_own_values(anatomy, lesion):
    image, mask, params = carve.carve(anatomy, lesion, np.random.default_rng(0))
    t1, inside = anatomy.t1.data, mask.data > 0
    assert inside.any() and not (inside & ~anatomy.brain).any()
    levels = anatomy.means
    deep = inside & (ndi.distance_transform_edt(inside) > params["rim_mm"] + 1)
    # the cavity sits at the scan's CSF level, well below its grey matter
    assert abs(np.median(image.data[deep]) - levels["csf"]) < 0.25 * (levels["gm"] - levels["csf"])
    assert image.data[inside].mean() < t1[inside].mean() - 0.3 * (levels["wm"] - levels["csf"])
    # every cavity value is one of the scan's own brain values (quantiles of them, in range)
    brain = t1[anatomy.brain]
    assert brain.min() <= image.data[deep].min() and image.data[deep].max() <= brain.max()
    # ex vacuo only darkens, and only near the lesion; far away the scan is untouched
    outside = ndi.distance_transform_edt(~inside)
    near = anatomy.brain & ~inside & (outside < params["reach_mm"])
    assert (image.data[near] <= t1[near] + 1e-3 * levels["wm"] + 1e-6).all()
    assert (image.data[near] < t1[near] - 1e-3).sum() > 100
    far = outside > params["reach_mm"] + 3
    assert np.array_equal(image.data[far], t1[far])


def test_carving_repeats_with_a_seed_and_mirrors_to_the_other_side(anatomy, lesion):
    a, mask_a, pa = carve.carve(anatomy, lesion, np.random.default_rng(1))
    b, mask_b, pb = carve.carve(anatomy, lesion, np.random.default_rng(1))
    assert pa == pb and np.array_equal(a.data, b.data) and np.array_equal(mask_a.data, mask_b.data)
    _, mirrored, _ = carve.carve(anatomy, lesion, np.random.default_rng(1), mirror=True)
    x = (anatomy.t1.affine @ np.c_[np.argwhere(mask_a.data), np.ones(mask_a.data.sum())].T)[0]
    xm = (anatomy.t1.affine @ np.c_[np.argwhere(mirrored.data), np.ones(mirrored.data.sum())].T)[0]
    assert x.mean() < -10 and xm.mean() > 10  # LESYMAP lesions are left; mirrored: right
