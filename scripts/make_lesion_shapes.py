"""Regenerate the lesion shapes shipped in src/napari_dunet/sample_data/lesion_shapes/.

Sixteen of the real hand-traced lesion masks the default weights were trained on (LESYMAP
Subject_001, 006, ..., 076 of ``../shared/data/lesions``, MNI space, 1 mm), each cut to its
bounding box (the affine moved with it, so the lesion stays where it was in MNI space) and
stored as uint8. A fine-tune's synthetic rehearsal cases draw their lesions from them
(``training.synthetic.rehearsal_cases``).

    python3 scripts/make_lesion_shapes.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from napari_dunet._sample_data import LESION_SHAPES
from napari_dunet.io import Volume, load_mask, save_mask

SUBJECTS = range(1, 81, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    args = parser.parse_args()
    shutil.rmtree(LESION_SHAPES, ignore_errors=True)
    LESION_SHAPES.mkdir(parents=True)
    for subject in SUBJECTS:
        name = f"Subject_{subject:03d}.nii.gz"
        lesion = load_mask(args.data / "lesions" / name)
        inside = np.argwhere(lesion.data > 0)
        start, stop = inside.min(0), inside.max(0) + 1
        box = lesion.data[tuple(slice(a, b) for a, b in zip(start, stop))]
        affine = lesion.affine.copy()
        affine[:3, 3] = lesion.affine[:3, :3] @ start + lesion.affine[:3, 3]
        save_mask((box > 0).astype(np.uint8), Volume(box, affine), LESION_SHAPES / name)
        print(name, box.shape, int((box > 0).sum()), "voxels")


if __name__ == "__main__":
    main()
