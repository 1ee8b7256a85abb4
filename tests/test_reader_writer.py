"""NIfTI reader and writer of the napari plugin, the bundled sample, the manifest, import cost."""

from __future__ import annotations

import subprocess
import sys
import warnings

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest

from napari_dunet._reader import get_reader, read_nifti
from napari_dunet._sample_data import (SAMPLE_IMAGE, SAMPLE_MASK, t1_with_lesion,
                                       t1_with_lesion_and_tracing)
from napari_dunet._writer import write_labels
from napari_dunet.errors import InputError
from napari_dunet.layers import native_volume, transform_affine

from conftest import make_head


def save(path, data, affine, qform=1, sform=2):
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, qform)
    img.set_sform(affine, sform)
    nib.save(img, path)
    return path


def reoriented(affine, shape, codes):
    """(affine, orientation transform) of the same voxels stored in ``codes`` axis order."""
    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(codes))
    return affine @ nio.inv_ornt_aff(transform, shape), transform


def world_of_voxel(data_kwargs, index):
    """World position (mm) napari gives the voxel ``index`` of a layer read by the plugin."""
    return np.asarray(data_kwargs["scale"]) * index + np.asarray(data_kwargs["translate"])


def test_image_layer_has_physical_placement_and_file_metadata(small_nifti):
    image_path, _ = small_nifti
    assert get_reader(str(image_path)) is read_nifti
    [(data, kwargs, kind)] = read_nifti(str(image_path))
    source = nib.load(image_path)
    assert kind == "image" and data.shape == (40, 48, 12)
    assert np.array_equal(data, source.get_fdata())
    assert kwargs["scale"] == (1.0, 1.0, 3.0) and kwargs["translate"] == (-20.0, -24.0, -18.0)
    lo, hi = kwargs["contrast_limits"]
    assert 0 <= lo < 100 < 500 < hi <= data.max()
    meta = kwargs["metadata"]
    assert np.array_equal(meta["affine"], source.affine)
    assert meta["header"]["qform_code"] == 1 and meta["header"]["sform_code"] == 2
    assert meta["path"] == str(image_path)


def test_masks_open_as_labels_and_probability_maps_as_images(small_nifti, tmp_path):
    _, mask_path = small_nifti
    [(data, _, kind)] = read_nifti(mask_path)
    assert kind == "labels" and data.dtype == np.uint8 and data.max() == 1
    affine = np.eye(4)
    binary = save(tmp_path / "tracing.nii.gz", make_head()[1].astype(np.float32), affine)
    assert read_nifti(binary)[0][2] == "labels"  # 0/1 values, whatever the name or dtype
    prob = save(tmp_path / "sub-01_lesion_prob.nii.gz",
                np.linspace(0, 1, 40 * 48 * 12, dtype=np.float32).reshape(40, 48, 12), affine)
    assert read_nifti(prob)[0][2] == "image"  # "lesion" in the name, but not whole numbers
    regions = save(tmp_path / "sub-01_seg.nii.gz", (make_head()[1] * 3).astype(np.int16), affine)
    assert read_nifti(regions)[0][2] == "labels"


def test_reader_declines_other_files_and_explains_broken_ones(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert get_reader(str(text)) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 this is not a complete gzip stream")
    with pytest.raises(InputError, match="broken.nii.gz"):
        read_nifti(broken)
    series = save(tmp_path / "fmri.nii.gz", np.zeros((4, 4, 4, 3), np.int16), np.eye(4))
    with pytest.raises(InputError, match="4D"):
        read_nifti(series)


@pytest.mark.parametrize("codes", ["LAS", "PIR", "ASL"])
def test_any_orientation_is_shown_in_ras_world_and_written_back_unchanged(tmp_path, codes):
    image, _ = make_head()
    ras_affine = np.diag([1.0, 1.0, 3.0, 1.0])
    ras_affine[:3, 3] = [-20, -24, -18]
    affine, transform = reoriented(ras_affine, image.shape, codes)
    stored = nio.apply_orientation(image, transform)
    path = save(tmp_path / f"{codes}.nii.gz", stored, affine)

    [(data, kwargs, _)] = read_nifti(path)
    # displayed in RAS+ order: identical voxels at the same world (mm) positions
    assert np.array_equal(data, image)
    assert np.allclose(world_of_voxel(kwargs, np.array([3, 5, 7])),
                       nib.affines.apply_affine(ras_affine, [3, 5, 7]))
    # painted on the display, saved in the file's own voxel order with its affine and codes
    painted = np.zeros(data.shape, np.uint8)
    painted[10:14, 20:22, 4] = 1
    out = write_labels(tmp_path / f"{codes}_mask.nii.gz", painted, kwargs)[0]
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(written.affine, nib.load(path).affine)
    assert (written.header["qform_code"], written.header["sform_code"]) == (1, 2)
    assert "".join(nio.aff2axcodes(written.affine)) == codes
    assert np.array_equal(np.asarray(written.dataobj), nio.apply_orientation(painted, transform))


def test_oblique_scan_is_straightened_for_display_and_saved_with_its_exact_affine(tmp_path):
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("z", 12, degrees=True).as_matrix() @ np.diag([1, 1, 3.0])
    affine[:3, 3] = [-20, -24, -18]
    path = save(tmp_path / "oblique.nii.gz", make_head()[0], affine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [(data, kwargs, _)] = read_nifti(path)
    assert any("oblique (12.0 degrees)" in str(w.message) for w in caught)
    assert np.allclose(kwargs["scale"], (1, 1, 3)) and np.allclose(kwargs["translate"], (-20, -24, -18))
    out = write_labels(tmp_path / "oblique_mask.nii", (data > 300).astype(np.uint8), kwargs)[0]
    assert np.array_equal(nib.load(out).affine, nib.load(path).affine)


def test_writer_replaces_files_atomically_and_keeps_label_values(small_nifti, tmp_path):
    [(data, kwargs, _)] = read_nifti(small_nifti[0])
    target = tmp_path / "out" / "mask.nii.gz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    labels = np.zeros(data.shape, np.uint8)
    labels[5:10, 5:10, 2] = 1
    labels[20:25, 20:25, 3] = 2
    write_labels(target, labels, kwargs)
    assert np.array_equal(np.asarray(nib.load(target).dataobj), labels)
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask.nii.gz"]  # no temporary left
    with pytest.raises(InputError, match="between 0 and 65535"):
        write_labels(target, labels.astype(np.int32) - 1, kwargs)
    assert np.array_equal(np.asarray(nib.load(target).dataobj), labels)  # failed write kept it


def test_labels_without_plugin_metadata_use_the_layer_transform(tmp_path):
    mask = np.zeros((6, 7, 8), np.uint8)
    mask[1, 2, 3] = 1
    attrs = {"metadata": {}, "scale": (2.0, 1.0, 0.5), "translate": (10.0, 0.0, -4.0),
             "rotate": np.eye(3), "shear": np.zeros(3), "affine": np.eye(4)}
    out = write_labels(tmp_path / "plain", mask, attrs)[0]
    assert out.endswith("plain.nii.gz")
    written = nib.load(out)
    assert np.allclose(written.affine, transform_affine(attrs))
    assert np.allclose(nib.affines.apply_affine(written.affine, (1, 2, 3)), (12, 2, -2.5))
    assert np.array_equal(native_volume(mask, {}, attrs).data, np.asarray(written.dataobj))


def test_viewer_opens_and_saves_through_the_plugin(make_napari_viewer, small_nifti, tmp_path):
    viewer = make_napari_viewer()
    image_path, mask_path = small_nifti
    image, = viewer.open(image_path, plugin="napari-dunet")
    mask, = viewer.open(mask_path, plugin="napari-dunet")
    assert mask._type_string == "labels" and image._type_string == "image"
    assert np.array_equal(mask.scale, image.scale) and np.array_equal(mask.translate, image.translate)
    mask.paint((30, 30, 6), 1)
    viewer.layers.selection.active = mask
    out = tmp_path / "edited_mask.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin="napari-dunet")
    written, source = nib.load(out), nib.load(image_path)
    assert np.array_equal(written.affine, source.affine)
    assert written.header["sform_code"] == source.header["sform_code"]
    assert np.asarray(written.dataobj)[30, 30, 6] == 1
    reread, = viewer.open(out, plugin="napari-dunet")
    assert np.array_equal(reread.data, mask.data)


def test_sample_is_a_real_brain_with_a_lesion_and_its_tracing():
    [(image, image_kwargs, kind)] = t1_with_lesion()
    assert kind == "image" and image.dtype == np.uint8 and image.ndim == 3
    (_, _, _), (mask, mask_kwargs, mask_kind) = t1_with_lesion_and_tracing()
    assert mask_kind == "labels" and mask.shape == image.shape
    assert mask_kwargs["scale"] == image_kwargs["scale"]
    assert mask_kwargs["translate"] == image_kwargs["translate"]
    lesion_ml = mask.sum() * np.prod(image_kwargs["scale"]) / 1000
    assert 20 < lesion_ml < 60
    brain = image > 60
    # hypointense: synth's typical chronic-stroke look lies between CSF and grey matter
    assert image[mask > 0].mean() < 0.8 * image[brain & (mask == 0)].mean()
    assert SAMPLE_IMAGE.stat().st_size + SAMPLE_MASK.stat().st_size < 3e6
    assert (SAMPLE_IMAGE.parent / "LICENSE-LESYMAP.txt").is_file()


def test_manifest_is_valid():
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-dunet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_plugin_discovery_and_reading_do_not_import_torch():
    code = ("import sys, napari_dunet, napari_dunet._reader, napari_dunet._writer, "
            "napari_dunet._sample_data, napari_dunet.model_store, napari_dunet._widgets.segment\n"
            "napari_dunet._sample_data.t1_with_lesion_and_tracing()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_scan_opens_in_axial_slices_anterior_up(make_napari_viewer, small_nifti):
    viewer = make_napari_viewer()
    viewer.open(small_nifti[0], plugin="napari-dunet")
    camera = getattr(viewer, "scene", viewer).camera
    assert viewer.dims.order == (2, 1, 0)  # slicing along inferior-superior: axial
    assert tuple(str(o) for o in camera.orientation2d) == ("up", "right")  # anterior up, neurological
    viewer.dims.order = (0, 1, 2)  # the user's choice stays when more files are opened
    viewer.open(small_nifti[1], plugin="napari-dunet")
    assert viewer.dims.order == (0, 1, 2)


@pytest.mark.parametrize("key", ["t1-lesion", "t1-lesion-tracing"])
def test_open_sample_shows_axial_slices(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-dunet", key)  # File > Open Sample > napari-dunet
    assert viewer.layers[0].name == "sample T1"
    assert viewer.dims.order == (2, 1, 0)  # axial, not napari's sideways sagittal
    camera = getattr(viewer, "scene", viewer).camera
    assert tuple(str(o) for o in camera.orientation2d) == ("up", "right")
