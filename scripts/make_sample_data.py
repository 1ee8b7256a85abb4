"""Regenerate the sample case shipped in src/napari_dunet/sample_data/ from ../shared/data.

A real T1 brain (LESYMAP's ch2, Apache-2.0) with a real hand-traced chronic stroke lesion
(LESYMAP Subject_089, 35 mL, left MCA territory) painted in by ``napari_dunet.synth`` with its
default appearance (seed 89), then cropped to 181 x 180 x 170 mm and resampled to 1.5 mm voxels
(uint8). Subject_089 is one of the lesions held out from the default weights' training.

    python3 scripts/make_sample_data.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from napari_dunet._sample_data import SAMPLE_DIR, SAMPLE_IMAGE, SAMPLE_MASK
from napari_dunet.io import Volume, load_mask, load_volume, save_mask, save_volume
from napari_dunet.synth import Appearance, synthesize_case

LESION = "Subject_089.nii.gz"
VOXEL_MM = 1.5
CROP_MM = ((0, 181), (22, 202), (5, 175))  # x, y, z ranges in ch2 voxels (1 mm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent
                        / "shared" / "data")
    args = parser.parse_args()
    ch2 = nib.load(args.data / "ch2.nii.gz")
    painted, lesion = synthesize_case(load_volume(args.data / "ch2.nii.gz"),
                                      load_mask(args.data / "lesions" / LESION),
                                      np.random.default_rng(89), Appearance())

    (x0, x1), (y0, y1), (z0, z1) = CROP_MM
    shape = tuple(int(round((b - a) / VOXEL_MM)) for a, b in CROP_MM)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = nib.affines.apply_affine(ch2.affine, (x0, y0, z0))
    target = (shape, affine)
    image = resample_from_to(nib.Nifti1Image(painted.data, ch2.affine), target, order=1)
    mask = resample_from_to(nib.Nifti1Image(lesion.data.astype(np.float32), ch2.affine), target,
                            order=1)

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
