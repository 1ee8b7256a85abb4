"""Forward and inverse preprocessing: crop policies, orientations, intensities, stacks."""

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_dunet.errors import InputError
from napari_dunet.io import load_mask
from napari_dunet.preprocessing import (ATLAS_BOX, PIXEL_MM, SliceGeometry, make_stacks,
                                        normalize_intensity, preprocess)


def dsc(a, b):
    a, b = a > 0, b > 0
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def round_trip(mask, affine, n_slices=None):
    geometry = SliceGeometry.for_volume(mask.shape, affine)
    slices = geometry.forward(mask.astype(np.float32))
    assert slices.shape == (n_slices or geometry.n_slices, 192, 192)
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


def test_legacy_scheme_keeps_whole_field_of_view(shared_data):
    img = nib.load(shared_data / "ch2.nii.gz")
    geometry = SliceGeometry.for_volume(img.shape, img.affine, scheme="legacy")
    assert geometry.policy == "square-fov"
    x0, x1, y0, y1 = geometry.box
    assert x0 <= 0 and y0 <= 0 and x1 >= img.shape[0] and y1 >= img.shape[1]
    assert (x1 - x0) == (y1 - y0)  # 1 mm isotropic: a square box
    ones = geometry.inverse(torch.ones(img.shape[2], 192, 192))
    assert ones.min() > 0.99  # every native voxel is covered


def test_legacy_anisotropic_voxels_keep_physical_aspect():
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    geometry = SliceGeometry.for_volume((300, 200, 10), affine, scheme="legacy")
    x0, x1, y0, y1 = geometry.box
    assert (x1 - x0) * 0.5 == pytest.approx((y1 - y0) * 1.0, abs=1)


def test_physical_pixels_are_the_paper_crop_size_and_thick_slices_are_split():
    geometry = SliceGeometry.for_volume((300, 200, 40), np.diag([0.5, 1.0, 3.0, 1.0]))
    assert geometry.policy == "physical"
    assert geometry.step == pytest.approx((PIXEL_MM / 0.5, PIXEL_MM / 1.0))
    assert geometry.z_factor == 3
    assert geometry.forward(np.ones((300, 200, 40), np.float32)).shape == (120, 192, 192)
    assert SliceGeometry.for_volume((200, 200, 40), np.diag([1.0, 1, 1.2, 1])).z_factor == 1


def resampled(mask, affine, shape):
    """A 1 mm RAS lesion mask moved onto another grid (linear, >= 0.5)."""
    from napari_dunet.io import Volume
    from napari_dunet.synth import resample_mask

    return resample_mask(Volume(mask.data, mask.affine), shape, affine).astype(np.uint8)


@pytest.mark.parametrize("zooms", [(0.9, 0.9, 3.0), (1.0, 1.0, 6.0), (0.45, 0.45, 5.0)])
def test_thick_slice_grids_round_trip(shared_data, zooms):
    lesion = load_mask(shared_data / "lesions" / "Subject_003.nii.gz")
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    shape = tuple(int(200 / z) for z in zooms)
    mask = resampled(lesion, affine, shape)
    assert mask.sum() > 100
    geometry, back = round_trip(mask, affine, n_slices=shape[2] * geometry_factor(zooms[2]))
    assert dsc(back, mask) >= 0.95


def geometry_factor(thickness):
    return max(1, round(thickness)) if thickness > 1.5 else 1


def test_oblique_header_round_trips(shared_data):
    lesion = load_mask(shared_data / "lesions" / "Subject_011.nii.gz")
    angle = np.radians(20.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * 1.1
    affine[:3, 3] = rotation @ np.array([-100.0, -120.0, -80.0])
    mask = resampled(lesion, affine, (180, 210, 170))
    assert mask.sum() > 100
    _, back = round_trip(mask, affine)
    assert dsc(back, mask) >= 0.97


def test_whole_head_window_is_centred_on_the_head_and_normalised_from_it(shared_data):
    """ch2's head placed off-centre in a large, mostly empty field of view: the window follows
    the head, and the head's intensities do not change."""
    ch2 = nib.load(shared_data / "ch2.nii.gz")
    head = np.asarray(ch2.dataobj, np.float32)
    big = np.zeros((256, 256, 240), np.float32)
    big[60:241, 30:247, 50:231] = head
    base = preprocess(head, ch2.affine)
    moved = preprocess(big, ch2.affine)
    assert np.subtract(moved[0].centre, base[0].centre) == pytest.approx((60, 30), abs=2)
    inside = moved[1][60:241, 30:247, 50:231]
    assert np.abs(inside - base[1]).max() < 0.02


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


def test_preprocess_rejects_nan_voxels_clearly():
    data = np.ones((20, 20, 20), np.float32)
    data[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        preprocess(data, np.eye(4))
