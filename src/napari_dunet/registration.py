"""Registration of a T1 scan to the MNI152 2009a template, with the lesion left out of the cost.

dipy does the work (affine by mutual information, then SyN by local cross-correlation): it
installs beside any numpy and scipy (``docs/report.md`` has the comparison with ANTsPy that
chose it). The template is the one nilearn's wheel ships, so nothing is downloaded.

Lesion (cost-function masking): the affine stages sample the metric outside the lesion (dipy's
``moving_mask``); dipy's SyN takes no mask, so there the lesion is filled with the template's
own intensities (affinely aligned), which leaves it nothing to pull on.

The result, ``MniTransform``, is stored as a coordinate map: for each voxel of a 2 mm MNI grid,
the native world point (RAS mm) it comes from. Resampling any native image onto any MNI grid
is then one interpolation, and the map is a plain NIfTI other tools can read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .errors import Cancelled, DunetError, InputError
from .io import Volume

#: nilearn's copy of the ICBM 2009a nonlinear symmetric template (brain only, 1 mm, RAS)
TEMPLATE_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
INSTALL = 'pip install "napari-dunet[report]"'

Progress = Callable[[str], None]
Cancel = Callable[[], bool]


def require_packages() -> None:
    """Raise ``DunetError`` with the install command unless dipy and nilearn are installed."""
    template_path()
    try:
        import dipy  # noqa: F401
    except ImportError as exc:
        raise DunetError(f"the lesion report registers with dipy: {INSTALL}.") from exc


def template_path(kind: str = "t1") -> Path:
    """Path of nilearn's MNI152 2009a ``t1``, ``gm`` or ``wm`` map (raises with the install
    command when nilearn is missing)."""
    try:
        import nilearn
    except ImportError as exc:
        raise DunetError(f"the lesion report needs nilearn's MNI template: {INSTALL}.") from exc
    return Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE_FILES[kind]


def load_template(kind: str = "t1") -> tuple[np.ndarray, np.ndarray]:
    """A template map as float32 (``t1``: 0-255, ``gm``/``wm``: probabilities) and its affine."""
    img = nib.load(str(template_path(kind)))
    data = img.get_fdata(dtype=np.float32)
    return (data / 255.0 if kind != "t1" else data), img.affine.copy()


def resample(data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
             target_affine: np.ndarray, order: int = 1) -> np.ndarray:
    """``data`` (on ``affine``) sampled on the grid ``shape``/``target_affine``; outside is 0.
    Downsampling smooths first (Gaussian, so that a 1 mm scan read at 2 mm does not alias)."""
    data = np.asarray(data, np.float32)
    ratio = np.linalg.norm(target_affine[:3, :3], axis=0) @ np.abs(
        np.linalg.inv(affine[:3, :3])).T  # rough voxel-count ratio per source axis
    sigma = np.clip((ratio - 1.0) * 0.5, 0.0, None)
    if order > 0 and sigma.max() > 0.25:
        data = ndi.gaussian_filter(data, sigma)
    m = np.linalg.inv(affine) @ target_affine
    return ndi.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=tuple(shape),
                                order=order, mode="constant", cval=0.0)


def iso_grid(shape: tuple[int, ...], affine: np.ndarray, mm: float
             ) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned RAS grid of ``mm`` voxels that covers the field of view of a grid."""
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    world = (affine @ corners.T).T[:, :3]
    low, high = world.min(0), world.max(0)
    out = np.eye(4)
    out[:3, :3] *= mm
    out[:3, 3] = low
    return tuple(int(n) for n in np.floor((high - low) / mm) + 1), out


@dataclass
class MniTransform:
    """Where each voxel of an MNI grid comes from in the native scan.

    ``coords`` (x, y, z, 3): native world coordinates (RAS mm) of the voxels of the MNI grid
    ``affine`` (2 mm by default); ``linear``: the affine part, MNI world -> native world;
    ``method``: how it was found, in words.
    """

    coords: np.ndarray
    affine: np.ndarray
    linear: np.ndarray
    method: str = "affine"

    def native_voxels(self, native_affine: np.ndarray, target_shape: tuple[int, ...],
                      target_affine: np.ndarray) -> np.ndarray:
        """For each voxel of an MNI grid, the native voxel position (3, x, y, z) it comes
        from: the map made voxel positions, then interpolated linearly onto that grid."""
        inv = np.linalg.inv(native_affine).astype(np.float32)
        coarse = self.coords @ inv[:3, :3].T + inv[:3, 3]
        m = np.linalg.inv(self.affine) @ target_affine
        return np.stack([ndi.affine_transform(coarse[..., k], m[:3, :3], m[:3, 3],
                                              output_shape=tuple(target_shape), order=1,
                                              mode="nearest") for k in range(3)])

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """The coordinate map as a 4D NIfTI (x, y, z, 3) on the MNI grid."""
        from .io import atomic_write

        img = nib.Nifti1Image(self.coords.astype(np.float32), self.affine)
        img.set_qform(self.affine, 4)  # MNI152
        img.set_sform(self.affine, 4)
        img.header["descrip"] = b"native RAS mm of each MNI voxel"
        return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite)


def sample(data: np.ndarray, voxels: np.ndarray, order: int = 1) -> np.ndarray:
    """``data`` read at the voxel positions ``voxels`` (``MniTransform.native_voxels``);
    outside the array is 0."""
    return ndi.map_coordinates(np.asarray(data, np.float32), voxels, order=order,
                               mode="constant", cval=0.0)


def register_to_mni(volume: Volume, lesion: np.ndarray | None = None, *, mm: float = 2.0,
                    nonlinear: bool = True, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> MniTransform:
    """Register a T1 (skull on or off) to the MNI152 2009a template at ``mm`` resolution.

    Stages: centres of mass, translation, rigid, affine (whole head, then the brain found
    by the affine), then SyN on the brain. ``lesion`` (same grid as the scan) is left out of
    every stage's cost. ``nonlinear=False`` stops after the affine. ``cancel`` is asked at
    every optimiser iteration; when it says True, ``Cancelled`` is raised.
    """
    require_packages()
    from dipy.align.imaffine import (AffineRegistration, MutualInformationMetric,
                                     transform_centers_of_mass)
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    from .tissue import head_mask

    logging.getLogger("dipy").setLevel(logging.WARNING)  # its INFO lines per level; ours suffice

    say = progress or (lambda message: None)
    start = time.monotonic()

    def done(stage: str) -> None:
        check()
        say(f"{stage} ({time.monotonic() - start:.0f} s)")

    def check(*_: object) -> None:
        if cancel is not None and cancel():
            raise Cancelled("registration stopped")

    class Metric(MutualInformationMetric):
        """Mutual information that stops the optimiser when the user asks to."""

        def distance_and_gradient(self, params):  # noqa: ANN001 - dipy's signature
            check()
            return super().distance_and_gradient(params)

    t1, t_affine = load_template("t1")
    fixed_shape, fixed_affine = iso_grid(t1.shape, t_affine, mm)
    fixed = resample(t1, t_affine, fixed_shape, fixed_affine)
    brain = fixed > 10
    fixed /= np.percentile(fixed[brain], 99)
    cost_region = ndi.binary_dilation(brain, iterations=max(1, round(6 / mm))).astype(np.int32)

    data = np.asarray(volume.data, np.float32)
    if lesion is not None and lesion.shape != data.shape:
        raise InputError(f"the lesion mask's shape {lesion.shape} differs from the scan's "
                         f"{data.shape}.")
    work_shape, work_affine = iso_grid(data.shape, volume.affine, mm)
    moving = resample(data, volume.affine, work_shape, work_affine)
    head = head_mask(moving, step=1)
    if not head.any():
        raise InputError("the scan is empty (no head found); it cannot be registered.")
    moving /= max(float(np.percentile(moving[head], 99)), 1e-6)
    keep = None
    if lesion is not None and np.any(lesion):
        lesion_work = resample((lesion > 0).astype(np.float32), volume.affine, work_shape,
                               work_affine) > 0.25
        lesion_work = ndi.binary_dilation(lesion_work, iterations=1)
        keep = (~lesion_work).astype(np.int32)
    else:
        lesion_work = None

    grids = dict(static_grid2world=fixed_affine, moving_grid2world=work_affine)
    start_affine = transform_centers_of_mass(fixed * brain, fixed_affine, moving * head,
                                             work_affine).affine
    coarse = AffineRegistration(metric=Metric(nbins=32), verbosity=0,
                                level_iters=[100, 50], sigmas=[2.0, 1.0], factors=[4, 2])
    fine = AffineRegistration(metric=Metric(nbins=32), verbosity=0,
                              level_iters=[100, 50, 25], sigmas=[2.0, 1.0, 0.0],
                              factors=[4, 2, 1])
    for transform in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()):
        start_affine = coarse.optimize(fixed, moving, transform, None, **grids,
                                       starting_affine=start_affine, static_mask=cost_region,
                                       moving_mask=keep).affine
    done("affine, whole head")
    # the brain, as the affine sees it, for the rest: the skull no longer pulls
    brain_native = resample(ndi.binary_dilation(brain, iterations=max(1, round(4 / mm)))
                            .astype(np.float32), fixed_affine, work_shape,
                            np.linalg.inv(start_affine) @ work_affine) > 0.5
    moving_brain = moving * brain_native
    affine = fine.optimize(fixed, moving_brain, AffineTransform3D(), None, **grids,
                           starting_affine=start_affine, static_mask=cost_region,
                           moving_mask=keep)
    done("affine, brain")
    if not nonlinear:
        world = _grid_world(fixed_shape, fixed_affine)
        coords = np.einsum("ij,j...->...i", affine.affine[:3, :3], world) + affine.affine[:3, 3]
        return MniTransform(coords.astype(np.float32), fixed_affine, affine.affine,
                            "dipy affine (mutual information)")
    if lesion_work is not None:  # the lesion shows the template's own (aligned) intensities
        template_native = affine.transform_inverse(fixed)
        scale = (np.median(moving_brain[brain_native & ~lesion_work])
                 / max(float(np.median(template_native[brain_native & ~lesion_work])), 1e-6))
        moving_brain = np.where(lesion_work, template_native * scale, moving_brain)
    syn = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=2.0, radius=2),
                                             level_iters=[50, 25, 10], callback=check)
    mapping = syn.optimize(fixed * cost_region, moving_brain, **grids, prealign=affine.affine)
    done("nonlinear (SyN)")
    return MniTransform(_coordinate_map(mapping, work_shape, work_affine, fixed_shape,
                                        fixed_affine), fixed_affine, affine.affine,
                        "dipy affine (mutual information) + SyN (cross-correlation)")


def _grid_world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates of a grid's voxels, (3, x, y, z)."""
    ijk = np.indices(shape, dtype=np.float32)
    return np.einsum("ij,j...->i...", affine[:3, :3].astype(np.float32), ijk) + \
        affine[:3, 3, None, None, None].astype(np.float32)


def _coordinate_map(mapping, work_shape, work_affine, fixed_shape, fixed_affine) -> np.ndarray:
    """Native world coordinates of each MNI voxel: the native grid's own coordinates (a
    linear function, so exactly interpolated), padded so the edges map too, pulled through
    the warp."""
    pad = 16
    padded = np.array(work_shape) + 2 * pad
    padded_affine = work_affine.copy()
    padded_affine[:3, 3] -= work_affine[:3, :3] @ np.full(3, pad)
    world = _grid_world(tuple(padded), padded_affine)
    w2g = np.linalg.inv(padded_affine)
    coords = [mapping.transform(world[k], interpolation="linear", image_world2grid=w2g,
                                out_shape=fixed_shape, out_grid2world=fixed_affine)
              for k in range(3)]
    return np.stack(coords, axis=-1).astype(np.float32)


def quality(mni_t1: np.ndarray, template: np.ndarray, brain: np.ndarray,
            exclude: np.ndarray | None = None) -> float:
    """Correlation of the normalised T1 with the template inside the template's brain mask
    (less ``exclude``, e.g. the lesion): about 0.8 for a good registration of a T1."""
    region = brain & (exclude == 0 if exclude is not None else True)
    a, b = mni_t1[region], template[region]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
