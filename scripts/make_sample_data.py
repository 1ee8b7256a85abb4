"""Regenerate the sample case shipped in src/napari_dunet/sample_data/ from ../shared/data.

A real T1 brain (LESYMAP's ch2, Apache-2.0) with a real hand-traced chronic stroke lesion
(LESYMAP Subject_089, 35 mL, left MCA territory) painted in as a hypointense, CSF-like cavity
with a blurred edge, then cropped to 181 x 180 x 170 mm and resampled to 1.5 mm voxels (uint8).

    python3 scripts/make_sample_data.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage as ndi

from napari_dunet._sample_data import SAMPLE_DIR, SAMPLE_IMAGE, SAMPLE_MASK
from napari_dunet.io import Volume, save_mask, save_volume

LESION = "Subject_089.nii.gz"
VOXEL_MM = 1.5
CROP_MM = ((0, 181), (22, 202), (5, 175))  # x, y, z ranges in ch2 voxels (1 mm)


def paint_lesion(t1: np.ndarray, lesion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CSF-like lesion (with mild texture) blended in over a 1 mm partial-volume edge."""
    brain = t1 > 40
    csf = float(np.percentile(t1[brain], 2))
    cavity = csf + rng.normal(0, 4, t1.shape)
    rim = ndi.distance_transform_edt(lesion) <= 2  # gliotic rim, a little brighter than CSF
    cavity[rim & lesion] += 0.35 * (float(np.median(t1[brain])) - csf)
    blend = ndi.gaussian_filter(lesion.astype(np.float32), 1.0)
    return t1 * (1 - blend) + cavity * blend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent
                        / "shared" / "data")
    args = parser.parse_args()
    ch2 = nib.load(args.data / "ch2.nii.gz")
    lesion = nib.load(args.data / "lesions" / LESION).get_fdata() > 0.5
    painted = paint_lesion(ch2.get_fdata(), lesion, np.random.default_rng(89))

    (x0, x1), (y0, y1), (z0, z1) = CROP_MM
    shape = tuple(int(round((b - a) / VOXEL_MM)) for a, b in CROP_MM)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = nib.affines.apply_affine(ch2.affine, (x0, y0, z0))
    target = (shape, affine)
    image = resample_from_to(nib.Nifti1Image(painted.astype(np.float32), ch2.affine), target, order=1)
    mask = resample_from_to(nib.Nifti1Image(lesion.astype(np.float32), ch2.affine), target, order=1)

    header = ch2.header.copy()
    header["descrip"] = b"ch2 (LESYMAP) + Subject_089 lesion, napari-dunet sample"
    reference = Volume(np.zeros(shape, np.uint8), affine, header)
    data = np.clip(np.rint(image.get_fdata()), 0, 255)
    save_volume(data, reference, SAMPLE_IMAGE, dtype=np.uint8, overwrite=True)
    save_mask(mask.get_fdata() >= 0.5, reference, SAMPLE_MASK, overwrite=True)
    shutil.copyfile(args.data / "LICENSE-LESYMAP.txt", SAMPLE_DIR / "LICENSE-LESYMAP.txt")
    for path in (SAMPLE_IMAGE, SAMPLE_MASK):
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
    print(f"grid {shape} at {VOXEL_MM} mm; lesion "
          f"{np.count_nonzero(mask.get_fdata() >= 0.5) * VOXEL_MM ** 3 / 1000:.1f} mL")


if __name__ == "__main__":
    main()
