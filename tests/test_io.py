"""NIfTI reading/writing, bad inputs, and case discovery in ATLAS layouts."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_dunet.errors import InputError, OutputExistsError
from napari_dunet.io import Volume, find_cases, load_mask, load_volume, save_mask


def write(path, data, affine=None, qcode=1, scode=1):
    affine = np.diag([1.0, 1, 1, 1]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, qcode)
    img.set_sform(affine, scode)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_mask_written_with_source_affine_and_header_codes(tmp_path, suffix):
    affine = np.array([[-0.9, 0, 0, 90], [0, 0.9, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]])
    src = write(tmp_path / f"t1{suffix}", np.ones((6, 7, 5), np.int16), affine, qcode=4, scode=2)
    vol = load_volume(src)
    out = save_mask(np.eye(6, 7)[:, :, None].repeat(5, 2), vol, tmp_path / f"m{suffix}")
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(back.affine, nib.load(src).affine)
    assert int(back.header["qform_code"]) == 4 and int(back.header["sform_code"]) == 2
    assert set(np.unique(np.asarray(back.dataobj))) == {0, 1}


def test_singleton_fourth_axis_is_accepted(tmp_path):
    vol = load_volume(write(tmp_path / "a.nii.gz", np.ones((4, 5, 6, 1), np.float32)))
    assert vol.data.shape == (4, 5, 6)


@pytest.mark.parametrize("shape,match", [((4, 5, 6, 3), "4D"), ((4, 5), "2D")])
def test_wrong_dimensionality(tmp_path, shape, match):
    with pytest.raises(InputError, match=match):
        load_volume(write(tmp_path / "a.nii.gz", np.ones(shape, np.float32)))


def test_nan_voxels_rejected(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_volume(write(tmp_path / "a.nii.gz", data))


def test_not_nifti(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="not a NIfTI"):
        load_volume(tmp_path / "a.png")
    (tmp_path / "b.nii").write_text("hello")
    with pytest.raises(InputError, match="cannot read"):
        load_volume(tmp_path / "b.nii")


def test_truncated_gzip(tmp_path):
    good = write(tmp_path / "a.nii.gz", np.random.default_rng(0).random((20, 20, 20), np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_volume(bad)
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a header"))
    with pytest.raises(InputError):
        load_volume(tmp_path / "junk.nii.gz")


def test_missing_file():
    with pytest.raises(InputError, match="no such file"):
        load_volume("/nonexistent/a.nii.gz")


def test_existing_output_is_kept_without_overwrite(tmp_path):
    vol = Volume(np.zeros((3, 3, 3)), np.eye(4))
    out = tmp_path / "m.nii.gz"
    out.write_bytes(b"user's corrected mask")
    with pytest.raises(OutputExistsError):
        save_mask(np.ones((3, 3, 3)), vol, out)
    assert out.read_bytes() == b"user's corrected mask"
    save_mask(np.ones((3, 3, 3)), vol, out, overwrite=True)
    assert load_mask(out).data.sum() == 27


def test_failed_write_leaves_no_partial_file(tmp_path):
    vol = Volume(np.zeros((3, 3, 3)), np.eye(4))
    with pytest.raises(InputError, match="shape"):
        save_mask(np.ones((2, 2, 2)), vol, tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_bids_v2_layout(tmp_path):
    for sub in ("r001s001", "r001s002"):
        anat = tmp_path / f"sub-{sub}" / "ses-1" / "anat"
        anat.mkdir(parents=True)
        stem = f"sub-{sub}_ses-1_space-MNI152NLin2009aSym"
        write(anat / f"{stem}_T1w.nii.gz", np.ones((3, 3, 3), np.int16))
        write(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", np.zeros((3, 3, 3), np.uint8))
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["sub-r001s001_ses-1", "sub-r001s002_ses-1"]
    assert all(len(c.masks) == 1 and c.masks[0].name.endswith("T1lesion_mask.nii.gz")
               for c in cases)


def test_r11_layout_unites_several_lesion_files(tmp_path):
    case = tmp_path / "Site1" / "031768" / "t01"
    case.mkdir(parents=True)
    write(case / "031768_t1w_deface_stx.nii.gz", np.ones((4, 4, 4), np.int16))
    a, b = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    a[0, 0, 0], b[3, 3, 3] = 1, 1
    write(case / "031768_LesionSmooth_stx.nii.gz", a)
    write(case / "031768_LesionSmooth_1_stx.nii.gz", b)
    (found,) = find_cases(tmp_path)
    assert found.image.name == "031768_t1w_deface_stx.nii.gz" and len(found.masks) == 2
    assert found.load_mask().data.sum() == 2


def test_single_file_case(small_nifti):
    image, _ = small_nifti
    (case,) = find_cases(image)
    assert case.image == image and case.name == "sub-01"
