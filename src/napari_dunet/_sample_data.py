"""Sample data shipped with the package (no download): a real T1 brain with a stroke lesion.

The files and how they were made: ``sample_data/README.md``. Their paths live here only.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_IMAGE = SAMPLE_DIR / "sub-ch2_T1w.nii.gz"
SAMPLE_MASK = SAMPLE_DIR / "sub-ch2_label-L_desc-T1lesion_mask.nii.gz"
LESION_SHAPES = SAMPLE_DIR / "lesion_shapes"  # real lesion masks for rehearsal cases


def t1_with_lesion() -> list[tuple]:
    """The sample T1 scan as an Image layer."""
    from ._reader import read_nifti

    return [_named(layer, "sample T1") for layer in read_nifti(SAMPLE_IMAGE)]


def t1_with_lesion_and_tracing() -> list[tuple]:
    """The sample T1 scan and its hand-traced lesion mask (Labels)."""
    from ._reader import read_nifti

    image, mask = read_nifti([SAMPLE_IMAGE, SAMPLE_MASK])
    return [_named(image, "sample T1"), _named(mask, "sample T1 manual lesion")]


def _named(layer: tuple, name: str) -> tuple:
    data, kwargs, kind = layer
    return data, {**kwargs, "name": name}, kind
