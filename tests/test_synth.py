"""Case synthesiser: real anatomy + lesion shape -> chronic-stroke T1 and mask, ATLAS BIDS layout."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dunet import synth
from napari_dunet.cli import main
from napari_dunet.errors import DunetError, InputError
from napari_dunet.io import Volume, find_cases, load_mask, load_volume


@pytest.fixture(scope="module")
def ch2_2mm(shared_data, tmp_path_factory):
    """The real ch2 T1 (skull on) at 2 mm: small enough for fast tests, same world space."""
    img = nib.load(shared_data / "ch2.nii.gz")
    data = np.asanyarray(img.dataobj)[::2, ::2, ::2]
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    path = tmp_path_factory.mktemp("anatomy") / "ch2_2mm.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def small_anatomy(ch2_2mm):
    return synth.load_anatomy(ch2_2mm)


@pytest.fixture(scope="module")
def lesion(shared_data):
    return load_mask(shared_data / "lesions" / "Subject_010.nii.gz")


def _lesion_vs_white_matter(image: Volume, mask: np.ndarray, wm: np.ndarray) -> tuple[float, float]:
    """Mean intensity of the lesion's interior and of the white matter 3-10 mm around it."""
    spacing = image.voxel_size
    data = image.data.astype(np.float64)
    interior = ndi.distance_transform_edt(mask, sampling=spacing) >= 2.0
    outside = ndi.distance_transform_edt(mask == 0, sampling=spacing)
    shell = (outside >= 3.0) & (outside <= 10.0) & (wm > 0.5)
    assert interior.sum() > 5 and shell.sum() > 5
    return float(data[interior].mean()), float(data[shell].mean())


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, ch2_2mm, shared_data, capsys):
    lesion_file = str(shared_data / "lesions" / "Subject_003.nii.gz")
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        assert main(["synth", "-o", str(out), "--anatomy", str(ch2_2mm), "--seed", str(seed),
                     "--lesions", lesion_file]) == 0
        assert main(["synth", "-o", str(out), "--anatomy", str(ch2_2mm), "--seed", str(seed),
                     "-n", "1", "--first-index", "2", "--site", "2"]) == 0
        runs[name] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert len(runs["a"]) == 2 * 3 + 1  # two cases x (T1w, mask, sidecar) + dataset_description
    assert {p.parts[0] for p in runs["a"] if len(p.parts) > 1} == {"sub-r001s001", "sub-r002s002"}
    assert runs["a"] == runs["b"]
    images = [p for p in runs["a"] if p.name.endswith("_T1w.nii.gz")]
    assert all(runs["a"][p] != runs["c"][p] for p in images)


def test_bids_layout_is_discovered_with_its_mask(tmp_path, small_anatomy, lesion):
    image, mask = synth.synthesize_case(small_anatomy, lesion, np.random.default_rng(0))
    image_path, mask_path = synth.write_bids_case(tmp_path, "r001s001", image, mask,
                                                  metadata={"Seed": [0, 1]})
    assert image_path.relative_to(tmp_path).as_posix() == (
        "sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz")
    assert mask_path.name == "sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"
    cases = find_cases(tmp_path)
    assert [(c.name, c.image, c.masks) for c in cases] == [("sub-r001s001_ses-1", image_path, [mask_path])]
    loaded = load_volume(image_path)
    np.testing.assert_array_equal(loaded.data, image.data)
    np.testing.assert_allclose(loaded.affine, small_anatomy.t1.affine)
    np.testing.assert_array_equal(cases[0].load_mask().data, mask.data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_real_lesion_is_inside_the_brain_and_darker_than_white_matter(small_anatomy, lesion, seed):
    image, mask = synth.synthesize_case(small_anatomy, lesion, np.random.default_rng(seed))
    assert image.data.shape == mask.data.shape == small_anatomy.t1.data.shape
    assert mask.data.dtype == np.uint8 and set(np.unique(mask.data)) == {0, 1}
    assert not (mask.data.astype(bool) & ~small_anatomy.brain).any()
    # the lesion keeps most of its (real) volume: ch2 is the lesions' own space
    moved = synth.resample_mask(lesion, image.data.shape, image.affine)
    assert mask.data.sum() >= 0.8 * moved.sum()
    inside, white_matter = _lesion_vs_white_matter(image, mask.data, small_anatomy.wm)
    assert inside < 0.85 * white_matter


def test_procedural_lesions_need_no_mask_files(tmp_path, ch2_2mm, small_anatomy, capsys):
    assert main(["synth", "-o", str(tmp_path), "--anatomy", str(ch2_2mm), "-n", "3", "--seed", "4"]) == 0
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == [f"sub-r001s00{i}_ses-1" for i in (1, 2, 3)]
    masks = [c.load_mask().data for c in cases]
    for case, mask in zip(cases, masks):
        assert mask.sum() > 0
        assert not (mask.astype(bool) & ~small_anatomy.brain).any()
        inside, white_matter = _lesion_vs_white_matter(load_volume(case.image), mask, small_anatomy.wm)
        assert inside < 0.85 * white_matter
    assert not np.array_equal(masks[0], masks[1])
    assert "procedural" in capsys.readouterr().out


def test_intensity_scale_and_dtype_vary_between_cases(small_anatomy, lesion):
    levels, dtypes = [], set()
    for seed in range(6):
        image, mask = synth.synthesize_case(small_anatomy, lesion, np.random.default_rng(seed))
        levels.append(float(np.median(image.data[small_anatomy.wm > 0.5])))
        dtypes.add(image.data.dtype)
    assert max(levels) > 3 * min(levels)
    assert len(dtypes) >= 2
    drawn = {synth.Appearance.sample(np.random.default_rng(s)).dtype for s in range(40)}
    assert drawn == set(synth.DTYPES)


def test_appearance_levels_follow_the_cases_own_tissue_intensities(small_anatomy, lesion):
    """The same appearance at two global scales: identical images up to the scale."""
    base = synth.Appearance(dtype="float32", noise=0.0, bias=0.0, wm_level=100.0)
    bright = synth.Appearance(dtype="float32", noise=0.0, bias=0.0, wm_level=1000.0)
    low, _ = synth.synthesize_case(small_anatomy, lesion, np.random.default_rng(0), base)
    high, _ = synth.synthesize_case(small_anatomy, lesion, np.random.default_rng(0), bright)
    np.testing.assert_allclose(high.data, 10 * low.data, rtol=1e-4, atol=1e-3)


def test_resample_mask_moves_through_world_coordinates_and_mirrors():
    source = np.zeros((20, 20, 20), np.uint8)
    source[2:5, 10:12, 6:8] = 1
    src_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    src_affine[:3, 3] = [-10, -10, -10]  # world x of voxel i is i - 10
    target_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    target_affine[:3, 3] = [-9.5, -9.5, -9.5]
    moved = synth.resample_mask(Volume(source, src_affine), (10, 10, 10), target_affine)
    world = lambda idx, aff: (aff[:3, :3] @ np.asarray(idx, float).T).T + aff[:3, 3]  # noqa: E731
    src_centre = world(np.argwhere(source), src_affine).mean(0)
    assert moved.any()
    np.testing.assert_allclose(world(np.argwhere(moved), target_affine).mean(0), src_centre, atol=1.0)
    mirrored = synth.resample_mask(Volume(source, src_affine), (10, 10, 10), target_affine, mirror=True)
    centre = world(np.argwhere(mirrored), target_affine).mean(0)
    np.testing.assert_allclose(centre, src_centre * [-1, 1, 1], atol=1.0)


def test_lesion_outside_the_brain_is_an_error(small_anatomy):
    outside = np.zeros(small_anatomy.brain.shape, bool)
    outside[0, 0, 0] = True
    with pytest.raises(InputError, match="does not overlap"):
        synth.synthesize_case(small_anatomy, outside, 0)


def test_missing_nilearn_says_what_to_install_but_t1_files_still_work(monkeypatch, ch2_2mm):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # import nilearn -> ImportError
    with pytest.raises(DunetError, match=r"napari-dunet\[synth\]"):
        synth.load_anatomy("mni")
    assert synth.load_anatomy(ch2_2mm).brain.any()


def test_mni_template_case_on_the_atlas_grid():
    pytest.importorskip("nilearn")
    anatomy = synth.load_mni_anatomy()
    assert anatomy.t1.data.shape == (197, 233, 189)
    assert anatomy.means["csf"] < anatomy.means["gm"] < anatomy.means["wm"]
    image, mask = synth.synthesize_case(anatomy, None, np.random.default_rng(3),
                                        synth.Appearance.sample(np.random.default_rng(3), "int16"))
    assert image.data.dtype == np.int16 and mask.data.shape == (197, 233, 189)
    assert not (mask.data.astype(bool) & ~anatomy.brain).any()
    inside, white_matter = _lesion_vs_white_matter(image, mask.data, anatomy.wm)
    assert inside < 0.85 * white_matter


def test_bias_field_stays_finite_for_a_brain_of_one_coarse_voxel():
    from napari_dunet.synth import _bias_field

    brain = np.zeros((2, 2, 9), bool)
    brain[0, 0, 4] = True  # a thick-slice draw whose brain covers one voxel of the coarse grid
    for seed in range(20):
        field = _bias_field(brain.shape, brain, 0.3, np.random.default_rng(seed))
        assert np.isfinite(field).all() and field.max() <= np.exp(3.0) + 1e-3
