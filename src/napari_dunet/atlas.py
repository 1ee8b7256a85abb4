"""A coarse hemisphere x lobe atlas of the MNI152 2009a template, derived here from the
template's own brain mask and grey-matter map (nilearn's copy; the ICBM 2009a licence allows
use and redistribution with its copyright notice, see ``docs/report.md``).

Lobes are cut by planes through standard MNI landmarks (central sulcus, Sylvian fissure,
parieto-occipital sulcus, tentorium), not traced sulci: a boundary can be a centimetre off.
The deep region (basal ganglia, thalamus, internal capsule and the ventricles between them)
is a box around them, the insula the grey matter of a box around it. Left is x < 0 (MNI, RAS).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

LOBES = ("frontal lobe", "parietal lobe", "temporal lobe", "occipital lobe", "insula",
         "basal ganglia, thalamus and internal capsule", "cerebellum")
#: label -> name; 1..7 left, 8..14 right, 15 brainstem
NAMES = {**{1 + i: f"left {lobe}" for i, lobe in enumerate(LOBES)},
         **{1 + len(LOBES) + i: f"right {lobe}" for i, lobe in enumerate(LOBES)},
         1 + 2 * len(LOBES): "brainstem"}


@lru_cache(maxsize=1)
def lobe_atlas() -> tuple[np.ndarray, np.ndarray]:
    """The label map (uint8, ``NAMES``) on the template's 1 mm grid, and that grid's affine."""
    from .registration import load_template

    t1, affine = load_template("t1")
    gm, _ = load_template("gm")
    brain = t1 > 10
    x, y, z = np.einsum("ij,j...->i...", affine[:3, :3], np.indices(t1.shape, dtype=float)) \
        + affine[:3, 3, None, None, None]
    ax = np.abs(x)
    grey = gm > 0.5

    tentorium = z < -25 + (-30 - y) / 3.0            # rises from (y -30, z -25) to (y -90, z -5)
    brainstem = (ax <= 14) & (y >= -45) & (y <= -10) & (z <= -6)
    cerebellum = (y < -30) & tentorium & ~brainstem
    sylvian = np.where(y >= 0, -8.0, -0.35 * y)      # the fissure's line, rising backwards
    central = -10 - (z - 20) * 0.35                  # central sulcus: y at height z
    deep = (ax >= 3) & (ax <= 30) & (y >= -38) & (y <= 28) & (z >= -12) & (z <= 22)
    insula = grey & (ax > 28) & (ax <= 45) & (y >= -32) & (y <= 26) & (z >= -18) & (z <= 26)
    temporal = ((z < sylvian) & (y >= -64) & ((y < 0) | (ax > 28))
                & ((ax > 30) | ((ax >= 18) & (z < -6))))  # medially, only below the thalamus
    occipital = (y < -70) | ((y < -64) & (z < sylvian))
    frontal = y > central
    lobe = np.select(
        [brainstem, cerebellum, deep, insula, temporal, occipital, frontal],
        [0, 7, 6, 5, 3, 4, 1], default=2)  # 0: brainstem; the rest parietal
    labels = np.where(lobe == 0, 1 + 2 * len(LOBES), lobe + np.where(x < 0, 0, len(LOBES)))
    return np.where(brain, labels, 0).astype(np.uint8), affine
