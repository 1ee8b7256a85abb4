"""Forward and inverse preprocessing: crop policies, orientations, intensities, stacks."""

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_dunet.errors import InputError
from napari_dunet.io import load_mask
from napari_dunet.preprocessing import (ATLAS_BOX, SliceGeometry, make_stacks,
                                        normalize_intensity)


def dsc(a, b):
    a, b = a > 0, b > 0
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def round_trip(mask, affine):
    geometry = SliceGeometry.for_volume(mask.shape, affine)
    slices = geometry.forward(mask.astype(np.float32))
    assert slices.shape == (geometry.n_slices, 192, 192)
    return geometry, geometry.inverse(slices) >= 0.5


@pytest.fixture(scope="module")
def atlas_grid_mask(shared_data):
    """A real lesion placed on the ATLAS grid (197x233x189, 1 mm), inside the paper's crop."""
    lesion = load_mask(shared_data / "lesions" / "Subject_001.nii.gz").data
    grid = np.zeros((197, 233, 189), np.uint8)
    grid[8:189, 8:225, 4:185] = lesion
    return grid


def test_atlas_grid_uses_paper_crop_and_survives_round_trip(atlas_grid_mask):
    affine = np.diag([1.0, 1, 1, 1])
    geometry, back = round_trip(atlas_grid_mask, affine)
    assert geometry.policy == "atlas-crop" and geometry.box == ATLAS_BOX
    assert dsc(back, atlas_grid_mask) >= 0.98


def test_atlas_crop_is_zero_outside():
    geometry = SliceGeometry.for_volume((197, 233, 5), np.eye(4))
    ones = geometry.inverse(torch.ones(5, 192, 192))
    x0, x1, y0, y1 = ATLAS_BOX
    assert ones[x0:x1, y0:y1].min() > 0.99
    outside = ones.copy()
    outside[x0:x1, y0:y1] = 0
    assert outside.max() == 0


def test_other_grid_keeps_whole_field_of_view(shared_data):
    img = nib.load(shared_data / "ch2.nii.gz")
    geometry = SliceGeometry.for_volume(img.shape, img.affine)
    assert geometry.policy == "square-fov"
    x0, x1, y0, y1 = geometry.box
    assert x0 <= 0 and y0 <= 0 and x1 >= img.shape[0] and y1 >= img.shape[1]
    assert (x1 - x0) == (y1 - y0)  # 1 mm isotropic: a square box
    ones = geometry.inverse(torch.ones(img.shape[2], 192, 192))
    assert ones.min() > 0.99  # every native voxel is covered


def test_anisotropic_voxels_keep_physical_aspect():
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    geometry = SliceGeometry.for_volume((300, 200, 10), affine)
    x0, x1, y0, y1 = geometry.box
    assert (x1 - x0) * 0.5 == pytest.approx((y1 - y0) * 1.0, abs=1)


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("P", "I", "R"), ("S", "R", "A")])
def test_any_orientation_round_trips_to_the_same_voxels(shared_data, codes):
    ras_mask = load_mask(shared_data / "lesions" / "Subject_007.nii.gz")
    ras = nib.Nifti1Image(ras_mask.data, ras_mask.affine)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(codes))
    img = ras.as_reoriented(ornt)
    assert nib.aff2axcodes(img.affine) == codes
    data = np.asarray(img.dataobj)
    geometry, back = round_trip(data, img.affine)
    assert back.shape == data.shape
    assert dsc(back, data) >= 0.98
    # the network sees the same RAS+ slices whatever the file's orientation
    ref = SliceGeometry.for_volume(ras.shape, ras.affine).forward(ras_mask.data.astype(np.float32))
    assert torch.allclose(geometry.forward(data.astype(np.float32)), ref)


def test_axial_index_counts_from_inferior():
    flipped = np.diag([1.0, 1, -1, 1])  # third axis runs superior -> inferior
    geometry = SliceGeometry.for_volume((10, 12, 8), flipped)
    assert geometry.axial_axis == 2
    assert geometry.axial_index(0) == 7 and geometry.axial_index(7) == 0


@pytest.mark.parametrize("dtype,scale,offset", [(np.uint8, 1, 0), (np.int16, 12, 0),
                                                (np.float32, 0.01, -3.0), (np.float64, 1e4, 5e3)])
def test_intensity_normalisation_is_scale_free(dtype, scale, offset):
    rng = np.random.default_rng(0)
    base = np.zeros((20, 20, 20))
    base[4:16, 4:16, 4:16] = rng.uniform(50, 200, (12, 12, 12))
    data = (base * scale + offset).astype(dtype)
    out = normalize_intensity(data)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert np.allclose(out, normalize_intensity(base.astype(np.uint8)), atol=0.02)


def test_constant_volume_is_rejected():
    with pytest.raises(InputError, match="empty"):
        normalize_intensity(np.zeros((4, 4, 4), np.int16))


def test_stacks_hold_previous_two_current_and_next_slice():
    slices = torch.arange(1, 6, dtype=torch.float32)[:, None, None].expand(5, 2, 2)
    stacks = make_stacks(slices, range(5))
    assert stacks.shape == (5, 4, 2, 2)
    assert stacks[:, :, 0, 0].tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4],
                                           [2, 3, 4, 5], [3, 4, 5, 0]]


def test_axial_slice_through_a_voxel():
    flipped = np.diag([1.0, 1, -1, 1])
    geometry = SliceGeometry.for_volume((10, 12, 8), flipped)
    assert geometry.axial_slice_at((3, 4, 0)) == 7 and geometry.axial_slice_at((3, 4, 6.6)) == 0
    assert geometry.axial_slice_at((0, 0, 99)) == 0  # clipped to the volume
