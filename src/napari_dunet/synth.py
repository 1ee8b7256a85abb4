"""Realistic chronic-stroke T1 cases: a real anatomy with a lesion shape painted in.

The appearance model (docs/synthesis.md) works in the anatomy's own intensity units: the lesion
core is a CSF-like level, its edge lies between CSF and grey matter, the tissue around it is
slightly darkened (gliosis), nearby CSF spaces widen a little (ex vacuo), and the lesion edge is
blurred (partial volume). Then the whole volume gets a contrast change, a smooth multiplicative
bias field, a global intensity scale and data type, and Rician noise. Every random choice comes
from the ``rng`` passed in, so a seed reproduces a case exactly.

Anatomies: the MNI152 2009a template bundled in nilearn's wheel (the ATLAS grid, with grey- and
white-matter maps; no download), or any T1 file, whose brain and tissue classes are estimated
from its intensities. Lesion shapes: mask files (resampled through world coordinates) or
procedural blobs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .errors import DunetError, InputError
from .io import Volume, atomic_write, load_volume, nifti_files, save_mask, save_volume
from .tissue import fill_holes_axially, largest_component, otsu_threshold

MNI_SPACE = "MNI152NLin2009aSym"
MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
DTYPES = ("uint8", "int16", "float32")
EX_VACUO_REACH_MM = 15.0  # CSF spaces this close to the lesion may widen


@dataclass
class Anatomy:
    """A T1 volume (float32) with its brain mask, CSF and white-matter fractions (0..1, same
    grid), the typical intensities of CSF, grey and white matter (``means``) and its BIDS
    ``space`` label (None when unknown)."""

    t1: Volume
    brain: np.ndarray
    csf: np.ndarray
    wm: np.ndarray
    means: dict[str, float]
    space: str | None = None


def _tissue_means(data: np.ndarray, fractions: dict[str, np.ndarray], source: object) -> dict[str, float]:
    """Median intensity of the voxels that are > 90 % of each tissue."""
    means = {}
    for name, fraction in fractions.items():
        voxels = data[fraction > 0.9]
        if voxels.size == 0:
            raise InputError(f"{source}: no {name.upper()} voxels found; is this a T1 brain scan?")
        means[name] = float(np.median(voxels))
    return _check_t1_order(means, source)


def _check_t1_order(means: dict[str, float], source: object) -> dict[str, float]:
    if not means["csf"] < means["gm"] < means["wm"]:
        shown = ", ".join(f"{k.upper()} {v:.4g}" for k, v in means.items())
        raise InputError(f"{source}: tissue intensities are not ordered CSF < GM < WM as in a T1 "
                         f"scan ({shown}).")
    return means


def mni_template_dir() -> Path:
    """The folder of nilearn's wheel that holds the MNI152 2009a template and tissue maps."""
    try:
        import nilearn
    except ImportError as exc:
        raise DunetError("the MNI152 template comes with nilearn, which is not installed: run "
                         "pip install 'napari-dunet[synth]', or give a T1 file as the anatomy.") from exc
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    missing = [name for name in MNI_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DunetError(f"nilearn {nilearn.__version__} does not bundle {missing[0]}; install "
                         "nilearn>=0.10, or give a T1 file as the anatomy.")
    return folder


def load_mni_anatomy() -> Anatomy:
    """MNI152 2009a symmetric (197x233x189, 1 mm, the ATLAS grid) from the installed nilearn."""
    folder = mni_template_dir()
    t1 = load_volume(folder / MNI_FILES["t1"])
    t1.data = t1.data.astype(np.float32)
    gm, wm = (_fraction(load_volume(folder / MNI_FILES[k]).data) for k in ("gm", "wm"))
    brain = t1.data > 0  # the template is brain-extracted
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    means = _tissue_means(t1.data, {"csf": csf, "gm": gm, "wm": wm}, "MNI152 template")
    return Anatomy(t1, brain, csf.astype(np.float32), wm, means, MNI_SPACE)


def _fraction(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    return data / max(float(data.max()), 1e-6)


def estimate_brain_mask(data: np.ndarray, voxel_size: tuple[float, ...] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Brain (tissue and the CSF inside it) of a T1 volume with or without skull.

    A foreground (above the minimum) smaller than 2.2 L is taken as an already extracted brain.
    Otherwise: Otsu threshold of the foreground -> erode 4 mm to cut the brain from scalp and
    skull -> largest component -> dilate back within the threshold -> close 3 mm -> fill holes
    in each axial plane (ventricles) and in 3D.
    """
    data = np.asarray(data, np.float32)
    voxel_ml = float(np.prod(voxel_size)) / 1000.0
    foreground = data > data.min()
    if not foreground.any():
        raise InputError("the anatomy is empty: all voxels have the same value.")
    head = ndi.binary_fill_holes(largest_component(foreground))
    if head.sum() * voxel_ml < 2200.0:
        return head
    bright = data > otsu_threshold(data[foreground])
    steps = max(1, round(4.0 / min(voxel_size)))
    core = ndi.binary_erosion(bright, iterations=steps)
    tissue = ndi.binary_dilation(largest_component(core if core.any() else bright),
                                 iterations=steps) & bright
    close = max(1, round(3.0 / min(voxel_size)))
    brain = ndi.binary_closing(np.pad(tissue, close), iterations=close)[(slice(close, -close),) * 3]
    return ndi.binary_fill_holes(fill_holes_axially(brain | tissue))


def _three_class_means(values: np.ndarray, iterations: int = 100) -> np.ndarray:
    """CSF, GM and WM intensity centres: a 3-Gaussian mixture fitted (EM) to the histogram."""
    counts, edges = np.histogram(values, 256)
    x = (edges[:-1] + edges[1:]) / 2
    weight = counts / counts.sum()
    means = np.percentile(values, [5, 50, 90]).astype(np.float64)
    sds = np.full(3, max(x[-1] - x[0], 1e-6) / 10)
    shares = np.full(3, 1 / 3)
    for _ in range(iterations):
        density = shares * np.exp(-0.5 * ((x[:, None] - means) / sds) ** 2) / sds
        resp = weight[:, None] * density / np.maximum(density.sum(1, keepdims=True), 1e-300)
        shares = np.maximum(resp.sum(0), 1e-12)
        means = (resp * x[:, None]).sum(0) / shares
        sds = np.sqrt((resp * (x[:, None] - means) ** 2).sum(0) / shares) + 1e-6 * (x[-1] - x[0] + 1)
    return np.sort(means)


def anatomy_from_t1(volume: Volume, space: str | None = None) -> Anatomy:
    """An anatomy from any T1 volume (skull on or off): a brain mask (``estimate_brain_mask``)
    and CSF/GM/WM levels from a 3-Gaussian mixture of the brain's intensities; CSF and WM are
    the voxels nearer their level than the grey-matter one."""
    data = volume.data.astype(np.float32)
    brain = estimate_brain_mask(data, volume.voxel_size)
    if brain.sum() < 1000:
        raise InputError(f"{volume.path or 'anatomy'}: no brain found (fewer than 1000 voxels).")
    levels = _three_class_means(data[brain])
    means = _check_t1_order(dict(zip(("csf", "gm", "wm"), map(float, levels))), volume.path or "anatomy")
    csf = (brain & (data < (means["csf"] + means["gm"]) / 2)).astype(np.float32)
    wm = (brain & (data >= (means["gm"] + means["wm"]) / 2)).astype(np.float32)
    return Anatomy(Volume(data, volume.affine, volume.header, volume.path), brain, csf, wm, means, space)


def load_anatomy(source: str | os.PathLike | None = None) -> Anatomy:
    """``None`` or ``"mni"``: the MNI152 2009a template; otherwise a T1 NIfTI file."""
    if source is None or str(source).lower() == "mni":
        return load_mni_anatomy()
    return anatomy_from_t1(load_volume(source))


# ---- lesion shapes --------------------------------------------------------------------------

def resample_mask(mask: Volume, shape: tuple[int, ...], affine: np.ndarray,
                  mirror: bool = False) -> np.ndarray:
    """A mask moved onto another grid through world coordinates (linear, then >= 0.5).

    ``mirror`` reflects it across the midsagittal plane x = 0 (left <-> right in MNI-like
    spaces). Only the target box that the lesion can reach is computed.
    """
    shape = tuple(int(s) for s in shape[:3])
    out = np.zeros(shape, bool)
    inside = np.argwhere(np.asarray(mask.data) > 0.5)
    if inside.size == 0:
        return out
    flip = np.diag([-1.0 if mirror else 1.0, 1.0, 1.0, 1.0])
    target_to_source = np.linalg.inv(mask.affine) @ flip @ np.asarray(affine, float)
    lo, hi = inside.min(0) - 1, inside.max(0) + 1
    corners = np.array([[c[0], c[1], c[2], 1.0] for c in np.stack(np.meshgrid(
        *zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)])
    reach = (np.linalg.inv(target_to_source) @ corners.T)[:3]
    start = np.clip(np.floor(reach.min(1)).astype(int) - 1, 0, shape)
    stop = np.clip(np.ceil(reach.max(1)).astype(int) + 2, 0, shape)
    if np.any(stop <= start):
        return out
    linear, shift = target_to_source[:3, :3], target_to_source[:3, 3]
    values = ndi.affine_transform(np.asarray(mask.data, np.float32), linear,
                                  offset=linear @ start + shift, output_shape=tuple(stop - start),
                                  order=1, mode="constant", cval=0.0)
    out[tuple(slice(a, b) for a, b in zip(start, stop))] = values >= 0.5
    return out


def procedural_lesion(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """A lesion-like blob: a randomly rotated ellipsoid (radii 4-30 mm, log-uniform) centred in
    white matter, its surface roughened by smooth noise, clipped to the brain."""
    from scipy.spatial.transform import Rotation

    centres = np.argwhere(anatomy.wm > 0.5)
    if centres.size == 0:
        raise InputError("the anatomy has no white matter to place a lesion in.")
    centre = centres[rng.integers(len(centres))]
    radii = np.exp(rng.uniform(np.log(4.0), np.log(30.0), 3))
    spacing = np.asarray(anatomy.t1.voxel_size)
    half = np.ceil(1.4 * radii.max() / spacing).astype(int)
    start = np.maximum(centre - half, 0)
    stop = np.minimum(centre + half + 1, anatomy.brain.shape)
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop)), indexing="ij"), -1)
    offsets = (grid - centre) * spacing @ Rotation.random(random_state=rng).as_matrix()
    radius = np.sqrt(((offsets / radii) ** 2).sum(-1))
    rough = ndi.gaussian_filter(rng.standard_normal(radius.shape).astype(np.float32), 2.0 / spacing)
    rough /= max(float(rough.std()), 1e-6)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    blob = (radius + 0.15 * rough < 1.0) & anatomy.brain[box]
    labels, n = ndi.label(blob)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        blob = labels == np.argmax(sizes)
    mask = np.zeros(anatomy.brain.shape, bool)
    mask[box] = blob
    return mask


# ---- appearance -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Appearance:
    """How one case looks. Lesion levels are on the case's own scale: 0 = CSF, 1 = grey matter.

    core / edge: lesion intensity deep inside / at the border; ramp_mm: depth over which the
    edge level gives way to the core; texture: lesion heterogeneity (same 0..1 scale);
    partial_volume_mm: Gaussian sigma of the blurred lesion border; gliosis: fractional
    darkening of tissue at the border, fading over gliosis_mm; ex_vacuo_mm: widening of CSF
    spaces within 15 mm of the lesion; gamma: contrast (intensity power about the WM level);
    bias: standard deviation of the log bias field in the brain; noise: Rician sigma as a
    fraction of the WM level; wm_level: white-matter intensity of the output; dtype: its type.
    """

    core: float = 0.2
    edge: float = 0.7
    ramp_mm: float = 2.0
    texture: float = 0.08
    partial_volume_mm: float = 0.8
    gliosis: float = 0.1
    gliosis_mm: float = 2.0
    ex_vacuo_mm: float = 1.0
    gamma: float = 1.0
    bias: float = 0.08
    noise: float = 0.02
    wm_level: float = 150.0
    dtype: str = "uint8"

    @classmethod
    def sample(cls, rng: np.random.Generator, dtype: str | None = None) -> "Appearance":
        """Random parameters within the ranges of docs/synthesis.md; ``dtype`` None = random."""
        dtype = dtype or DTYPES[rng.integers(len(DTYPES))]
        if dtype not in DTYPES:
            raise InputError(f"unknown data type {dtype!r}; use one of {', '.join(DTYPES)}.")
        wm_range = {"uint8": (90.0, 200.0), "int16": (200.0, 4000.0), "float32": (0.5, 2000.0)}[dtype]
        return cls(
            core=rng.uniform(0.0, 0.4),
            edge=rng.uniform(0.45, 0.9),
            ramp_mm=rng.uniform(1.0, 4.0),
            texture=rng.uniform(0.03, 0.15),
            partial_volume_mm=rng.uniform(0.5, 1.2),
            gliosis=rng.uniform(0.03, 0.15),
            gliosis_mm=rng.uniform(1.0, 3.0),
            ex_vacuo_mm=rng.uniform(0.0, 2.5) if rng.random() < 0.7 else 0.0,
            gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
            bias=rng.uniform(0.02, 0.15),
            noise=rng.uniform(0.01, 0.045),
            wm_level=float(np.exp(rng.uniform(*np.log(wm_range)))),
            dtype=dtype,
        )


def synthesize_case(anatomy: Anatomy | Volume, lesion: np.ndarray | Volume | None = None,
                    rng: np.random.Generator | int | None = None,
                    appearance: Appearance | None = None, *,
                    mirror: bool = False) -> tuple[Volume, Volume]:
    """A chronic-stroke T1 image and its lesion mask on the anatomy's grid.

    ``lesion``: a boolean array on the anatomy's grid, a mask ``Volume`` on any grid (resampled
    through world coordinates, ``mirror`` reflects it left-right), or None for a procedural
    lesion. The mask is clipped to the brain. ``appearance`` defaults to ``Appearance.sample``.
    """
    if isinstance(anatomy, Volume):
        anatomy = anatomy_from_t1(anatomy)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    t1 = anatomy.t1
    if lesion is None:
        mask = procedural_lesion(anatomy, rng)
    elif isinstance(lesion, Volume):
        mask = resample_mask(lesion, t1.data.shape, t1.affine, mirror)
    else:
        if lesion.shape != t1.data.shape:
            raise InputError(f"lesion mask shape {lesion.shape} differs from the anatomy's "
                             f"{t1.data.shape}; pass it as a Volume to resample it.")
        mask = np.asarray(lesion) > 0
    mask = mask & anatomy.brain
    if not mask.any():
        raise InputError("the lesion does not overlap the anatomy's brain.")
    appearance = appearance or Appearance.sample(rng)
    data = t1.data.astype(np.float32)
    _paint_lesion(data, mask, anatomy, appearance, rng)
    data = _scan_effects(data, anatomy, appearance, rng)
    header = t1.header.copy()
    header.set_data_dtype(appearance.dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_xyzt_units("mm")
    header["descrip"] = b"napari-dunet synthetic chronic stroke T1"
    mask_header = header.copy()
    mask_header.set_data_dtype(np.uint8)
    return (Volume(data, t1.affine.copy(), header),
            Volume(mask.astype(np.uint8), t1.affine.copy(), mask_header))


def _paint_lesion(data: np.ndarray, mask: np.ndarray, anatomy: Anatomy, ap: Appearance,
                  rng: np.random.Generator) -> None:
    """Ex-vacuo widening, gliotic rim, lesion core/edge and partial volume, in place, within a
    box around the lesion."""
    spacing = np.asarray(anatomy.t1.voxel_size)
    margin = np.ceil((EX_VACUO_REACH_MM + 5.0) / spacing).astype(int)
    inside = np.argwhere(mask)
    box = tuple(slice(max(a, 0), b) for a, b in zip(inside.min(0) - margin, inside.max(0) + margin + 1))
    sub, lesion = data[box], mask[box]
    brain, csf = anatomy.brain[box], anatomy.csf[box]
    csf_level, gm_level = anatomy.means["csf"], anatomy.means["gm"]

    outside_mm = ndi.distance_transform_edt(~lesion, sampling=spacing)
    if ap.ex_vacuo_mm > 0:
        fluid = csf > 0.5
        near = (outside_mm < EX_VACUO_REACH_MM) & brain & ~lesion
        if fluid.any():
            grown = (ndi.distance_transform_edt(~fluid, sampling=spacing) <= ap.ex_vacuo_mm) & near & ~fluid
            widen = np.clip(ndi.gaussian_filter(grown.astype(np.float32), 0.5 / spacing), 0, 1) * near
            sub += widen * (csf_level - sub)

    depth_mm = ndi.distance_transform_edt(lesion, sampling=spacing)
    texture = ndi.gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32), 1.5 / spacing)
    texture *= ap.texture / max(float(texture.std()), 1e-6)
    level = ap.core + (ap.edge - ap.core) * np.exp(-depth_mm / ap.ramp_mm) + texture
    lesion_intensity = csf_level + level * (gm_level - csf_level)
    sub *= 1.0 - ap.gliosis * np.exp(-outside_mm / ap.gliosis_mm) * (1.0 - csf) * brain
    blend = ndi.gaussian_filter(lesion.astype(np.float32), ap.partial_volume_mm / spacing) * brain
    data[box] = sub * (1.0 - blend) + lesion_intensity * blend


def _scan_effects(data: np.ndarray, anatomy: Anatomy, ap: Appearance,
                  rng: np.random.Generator) -> np.ndarray:
    """Contrast (gamma), smooth bias field, global scale, Rician noise, cast to ``ap.dtype``."""
    wm = anatomy.means["wm"]
    np.maximum(data, 0, out=data)
    data = wm * (data / wm) ** ap.gamma
    data *= _bias_field(data.shape, anatomy.brain, ap.bias, rng)
    data *= ap.wm_level / wm
    sigma = ap.noise * ap.wm_level
    real = data + sigma * rng.standard_normal(data.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(data.shape, dtype=np.float32)
    data = np.sqrt(real * real + imaginary * imaginary)
    if ap.dtype == "float32":
        return data.astype(np.float32)
    info = np.iinfo(ap.dtype)
    return np.clip(np.rint(data), info.min, info.max).astype(ap.dtype)


def _bias_field(shape: tuple[int, ...], brain: np.ndarray, strength: float,
                rng: np.random.Generator) -> np.ndarray:
    """exp(random cubic polynomial of the normalised coordinates), log-std ``strength`` in the
    brain and geometric mean 1 there."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    log_field = np.zeros(shape, np.float32)
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                if i + j + k == 0:
                    continue
                coefficient = rng.standard_normal() / (i + j + k)
                log_field += coefficient * (axes[0][:, None, None] ** i * axes[1][None, :, None] ** j
                                            * axes[2][None, None, :] ** k)
    values = log_field[brain]
    spread = float(values.std())
    if spread < 1e-3:  # a brain of a voxel or two on the coarse grid: no field to scale
        return np.ones(shape, np.float32)
    log_field -= values.mean()
    log_field *= strength / spread
    # far outside a small brain the polynomial grows; keep the field finite (at most e^3)
    return np.exp(np.clip(log_field, -3.0, 3.0))


# ---- ATLAS v2.0 BIDS output -----------------------------------------------------------------

def bids_paths(root: str | os.PathLike, subject: str, space: str | None = MNI_SPACE,
               session: str = "1") -> tuple[Path, Path]:
    """(T1w path, lesion mask path) of one case in the ATLAS v2.0 BIDS layout."""
    anat = Path(root) / f"sub-{subject}" / f"ses-{session}" / "anat"
    stem = f"sub-{subject}_ses-{session}" + (f"_space-{space}" if space else "")
    return anat / f"{stem}_T1w.nii.gz", anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"


def write_bids_case(root: str | os.PathLike, subject: str, image: Volume, mask: Volume, *,
                    space: str | None = MNI_SPACE, metadata: dict | None = None,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Write image, mask and a JSON sidecar (``metadata``) in the ATLAS v2.0 BIDS layout."""
    image_path, mask_path = bids_paths(root, subject, space)
    save_volume(image.data, image, image_path, dtype=image.data.dtype.type, overwrite=overwrite)
    save_mask(mask.data, image, mask_path, overwrite=overwrite)
    if metadata is not None:
        sidecar = image_path.with_name(image_path.name.replace(".nii.gz", ".json"))
        text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
        atomic_write(sidecar, lambda tmp: tmp.write_text(text), overwrite=overwrite)
    return image_path, mask_path


def write_dataset_description(root: str | os.PathLike) -> Path:
    """A minimal BIDS ``dataset_description.json`` at ``root`` (an existing one is kept)."""
    path = Path(root) / "dataset_description.json"
    if not path.exists():
        text = json.dumps({"Name": "napari-dunet synthetic chronic stroke T1 cases",
                           "BIDSVersion": "1.8.0", "DatasetType": "raw",
                           "GeneratedBy": [{"Name": "napari-dunet synth"}]}, indent=2) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def lesion_files(paths: list[str | os.PathLike]) -> list[Path]:
    """NIfTI mask files from files and folders (a folder's NIfTI files, sorted)."""
    found = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(nifti_files(item, recursive=False))
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(f"{item}: no such file or folder.")
    if not found:
        raise InputError(f"no NIfTI lesion masks in {', '.join(map(str, paths))}.")
    return found


def case_metadata(appearance: Appearance, seed: int, index: int, lesion: Path | None,
                  mirrored: bool, anatomy: Anatomy) -> dict:
    """What a BIDS sidecar records about how a case was made."""
    return {
        "GeneratedBy": [{"Name": "napari-dunet synth"}],
        "Seed": [seed, index],
        "Anatomy": anatomy.space or str(anatomy.t1.path),
        "LesionSource": lesion.name if lesion is not None else "procedural",
        "LesionMirrored": mirrored,
        "Appearance": {k: (round(v, 4) if isinstance(v, float) else v)
                       for k, v in asdict(appearance).items()},
    }

