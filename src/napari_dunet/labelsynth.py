"""Training scans drawn from tissue label maps: random contrast, shape, resolution and view.

The approach of SynthSeg (Billot et al., Medical Image Analysis 2023) and SynthStroke
(Chalcroft et al., 2025): a network that only ever sees images drawn from label maps with
random intensities per label, random deformation, random resolution and random artefacts learns
the shape of a lesion, not one scanner's look. Every draw (``draw_scan``):

1. a real lesion shape (optionally mirrored) becomes a cavity core and a gliotic rim in the
   anatomy's label map; in draws with T1 tissue order (drawn first, see 4) the cavity is in some
   draws crossed by strands of tissue, the nearby ventricle and sulci widen (ex vacuo) and
   nearby cortex thins (a share of draws leaves the head lesion-free, so that whole healthy
   heads are seen too);
2. the skull and scalp labels are kept, or removed (brain-extracted scans);
3. random affine (rotation, scaling, shift) and smooth elastic deformation, in one resampling;
4. an intensity per label: T1-like order in many draws (CSF < GM < WM, lesion core near CSF),
   T2-like order in some (WM < GM < CSF, the order of T2 and proton-density scans), any order
   in the rest; the lesion core stays near the CSF level in most draws (a fluid cavity looks
   like CSF in any contrast), in some draws exactly a CSF class's level and texture (a cavity
   told from CSF by shape and place alone); some lesions are mostly gliotic rim, and a smooth
   random field pulls lesion voxels part of the way to the tissue level (cavity and gliosis
   mixed);
   per-label texture and partial-volume blur. A share of the draws
   with a lesion is painted instead (``SynthRanges.painted``): the anatomy's own T1, with the
   real texture of a scan, gets the lesion of ``synth.synthesize_case`` (the appearance model
   of ``dunet synth``) and then the same deformation, field of view and slices;
5. random field of view (cropped below, above and at the sides) and slice thickness (blurred
   and resampled to 2-7 mm axial slices, as clinical scans are);
6. a smooth bias field, gamma, and noise.

The ranges are the fields of ``SynthRanges`` (recorded in the model card). The result is a
native-grid image and mask, which training prepares with the same preprocessing as any scan.
Every random choice comes from the ``rng`` passed in: a seed reproduces a draw exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .errors import InputError
from .io import Volume, load_volume
from .geometry import ras_ornt, to_ras
from .synth import (Anatomy, _bias_field, anatomy_from_t1, load_anatomy, resample_mask,
                    synthesize_case)
from .tissue import fill_holes_axially, head_mask

# label values of a label map; HEAD: scalp, fat and muscle; OTHER: the dark rest of a head
# (bone, air spaces), bright or dark depending on the contrast; the eyes, inside the head's
# filled outline, fall in the scalp's darker class
BACKGROUND, HEAD, CSF, GM, WM, CORE, RIM, OTHER = 0, (1, 2), (3, 4), (5, 6, 7), (8, 9), 10, 11, 12
N_LABELS = 13
BRAIN = CSF + GM + WM + (CORE, RIM)
EXTRA_AXIAL_MM = 2.0  # the dark band this deep around the brain of a skull-on scan is CSF
VENTRICLE_DEPTH_MM = 8.0  # CSF this deep inside the brain is taken for the ventricles
T1_ORDER, T2_ORDER, ANY_ORDER = "t1", "t2", "any"  # tissue orders of a draw
TISSUE_LEVELS = {"head": HEAD, "csf": CSF, "gm": GM, "wm": WM}


@dataclass(frozen=True)
class SynthRanges:
    """The random ranges of one draw (uniform unless said otherwise)."""

    t1_like: float = 0.35  # share of label-map draws with T1 tissue order
    t2_like: float = 0.35  # share with T2 tissue order (the others: any order)
    painted: float = 0.3  # share of draws with a lesion painted into the anatomy's own T1
    core_like_csf: float = 0.8  # share of draws whose lesion core is near the CSF level
    lesion_contrast: float = 0.15  # least difference of the core from the grey and white matter
    rotation_deg: float = 12.0
    scale: float = 0.12  # each axis scaled by 1 +- scale
    shift_mm: float = 10.0
    elastic_mm: float = 3.0  # largest displacement of the smooth deformation
    strip_skull: float = 0.3  # share of skull-on anatomies drawn brain-extracted
    texture: tuple[float, float] = (0.01, 0.06)  # within-label standard deviation
    blur_mm: tuple[float, float] = (0.3, 1.0)  # partial-volume blur (Gaussian sigma)
    thick_slices: float = 0.4  # share of draws with thick axial slices
    slice_mm: tuple[int, int] = (2, 7)
    crop_mm: float = 30.0  # at most this much cut off each side of the field of view
    bias: tuple[float, float] = (0.0, 0.3)  # log-standard deviation of the bias field
    gamma: tuple[float, float] = (0.7, 1.5)  # log-uniform
    noise: tuple[float, float] = (0.0, 0.05)  # Rician sigma, fraction of the brightest tissue
    rim_mm: tuple[float, float] = (1.0, 3.0)  # depth of the gliotic rim inside the mask
    gliotic: float = 0.3  # share of lesions mostly gliosis: their rim reaches gliotic_rim_mm deep
    gliotic_t2: float = 0.6  # that share in T2-order draws (a chronic infarct on T2 and FLAIR:
    # a gliotic margin several mm wide around the cavity, often most of the lesion)
    gliotic_rim_mm: tuple[float, float] = (3.0, 10.0)
    mottle: tuple[float, float] = (0.0, 0.5)  # largest pull of lesion voxels towards the tissue
    cavity_like_csf: float = 0.5  # share of T1-order draws whose cavity is exactly a CSF class
    # (level, texture, no mottle): only shape and place tell it. T2-order and any-order draws keep
    # the randomised core, as the shipped weights learned it (the real stroke T2 check)
    # tissue loss around the lesion (strands, ex-vacuo widening, cortical loss): T1-order draws only
    strands: float = 0.4  # share of lesions whose cavity is crossed by strands of gliotic tissue
    strand_mm: tuple[float, float] = (2.0, 5.0)  # grain of the strands' random field
    strand_share: tuple[float, float] = (0.05, 0.2)  # share of the cavity they take
    ex_vacuo_mm: tuple[float, float] = (0.0, 5.0)  # widening of the ventricles near the lesion
    sulci_mm: tuple[float, float] = (0.0, 2.0)  # and of the sulci and cisterns near it
    ex_vacuo_reach_mm: float = 20.0  # CSF spaces this near the lesion widen
    cortical_loss: float = 0.5  # share of draws where cortex next to the lesion becomes CSF
    lesion_free: float = 0.15  # share of draws without the lesion (a whole lesion-free head)


@dataclass
class LabelAnatomy:
    """A tissue label map (RAS+, uint8; values above) and its affine; ``source``: the anatomy it was
    made from, on the same grid (the scan of the painted draws)."""

    name: str
    labels: np.ndarray
    affine: np.ndarray
    source: Anatomy | None = None

    @property
    def has_skull(self) -> bool:
        return bool(np.isin(self.labels, HEAD).any())


def label_anatomy(anatomy: Anatomy, name: str) -> LabelAnatomy:
    """Labels from an ``synth.Anatomy``: CSF, GM and WM split into intensity sub-classes (so
    that a draw has texture within a tissue, as SynthSeg's many labels give it). A skull-on
    scan also gets its scalp in two classes, the dark band around the brain as CSF (the
    extra-axial CSF, bright in a T2 scan) and the rest inside the head (bone, air spaces) as
    ``OTHER``, so that fluid and bone outside the brain are drawn in every contrast too."""
    data, brain = anatomy.t1.data, anatomy.brain
    csf = brain & (anatomy.csf >= 0.5)
    wm = brain & ~csf & (anatomy.wm >= 0.5)
    gm = brain & ~csf & ~wm
    labels = np.zeros(data.shape, np.uint8)
    head = head_mask(data, 1) & ~brain
    if head.sum() > 0.2 * brain.sum():  # a skull-on scan
        _split(labels, data, head, HEAD)
        inside = fill_holes_axially(head | brain) & ~head & ~brain
        band = ndi.distance_transform_edt(~brain, sampling=anatomy.t1.voxel_size) <= EXTRA_AXIAL_MM
        labels[inside & band] = CSF[0]
        labels[inside & ~band] = OTHER
    for mask, values in ((csf, CSF), (gm, GM), (wm, WM)):
        _split(labels, data, mask, values)
    return LabelAnatomy(name, labels, anatomy.t1.affine.copy(), anatomy)


def _split(labels: np.ndarray, data: np.ndarray, mask: np.ndarray, values: tuple[int, ...]) -> None:
    """Give ``mask``'s voxels ``values`` by intensity quantile (equal shares)."""
    if not mask.any():
        return
    edges = np.quantile(data[mask], np.linspace(0, 1, len(values) + 1)[1:-1])
    labels[mask] = np.asarray(values, np.uint8)[np.searchsorted(edges, data[mask])]


def load_label_anatomy(source: str | Path) -> LabelAnatomy:
    """``"mni"`` (nilearn's MNI152 2009a) or a T1 file, as a RAS+ label map."""
    if str(source).lower() == "mni":
        name, anatomy = "mni", load_anatomy("mni")
    else:  # negative values (interpolation around a brain-extracted scan) are background
        volume = load_volume(source)
        volume.data = np.clip(volume.data.astype(np.float32), 0.0, None)
        name, anatomy = Path(source).name.split(".")[0], anatomy_from_t1(volume)
    return label_anatomy(ras_anatomy(anatomy), name)


def ras_anatomy(anatomy: Anatomy) -> Anatomy:
    """The anatomy with its arrays reordered and flipped to RAS+ (no resampling)."""
    import nibabel.orientations as nio

    native = anatomy.t1.affine
    affine = native @ nio.inv_ornt_aff(ras_ornt(native), anatomy.t1.data.shape)

    def ras(data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(to_ras(data, native))

    return Anatomy(Volume(ras(anatomy.t1.data), affine, anatomy.t1.header.copy()),
                   ras(anatomy.brain), ras(anatomy.csf), ras(anatomy.wm), anatomy.means,
                   anatomy.space)


def lesion_on(anatomy: LabelAnatomy, lesion: Volume, mirror: bool = False) -> np.ndarray:
    """A lesion mask moved onto the anatomy's grid (world coordinates), within its brain."""
    brain = np.isin(anatomy.labels, BRAIN)
    return resample_mask(lesion, anatomy.labels.shape, anatomy.affine, mirror) & brain


# ---- one draw -------------------------------------------------------------------------------

def draw_scan(anatomy: LabelAnatomy, lesion: np.ndarray, rng: np.random.Generator,
              ranges: SynthRanges = SynthRanges()) -> tuple[Volume, Volume]:
    """A random scan (float32) and its lesion mask (uint8) on a random native grid (RAS+)."""
    if not lesion.any():
        raise InputError(f"the lesion does not reach {anatomy.name}'s brain.")
    drawn = lesion if rng.random() >= ranges.lesion_free else np.zeros_like(lesion)
    painted = drawn.any() and anatomy.source is not None and rng.random() < ranges.painted
    if painted:  # bias field and noise come with the painting
        image, mask = _painted(anatomy, drawn, rng, ranges)
    else:
        order = tissue_order(rng, ranges)
        gliotic = ranges.gliotic_t2 if order == T2_ORDER else ranges.gliotic
        labels = with_lesion(anatomy.labels, drawn, rng, ranges, tissue_loss=order == T1_ORDER,
                             gliotic=gliotic)
        if anatomy.has_skull and rng.random() < ranges.strip_skull:
            labels[np.isin(labels, HEAD + (OTHER,))] = BACKGROUND
        labels = _deform(labels, rng, ranges)
        image = _paint(labels, rng, ranges, order)
        mask = ((labels == CORE) | (labels == RIM)).astype(np.float32)
    image, mask, spacing = _field_of_view_and_slices(image, mask, rng, ranges)
    if not painted:
        image = _artefacts(image, image > 1e-3, rng, ranges)  # bias field's mean: non-background
    affine = np.diag([1.0, 1.0, float(spacing), 1.0])
    affine[:3, 3] = -np.asarray(image.shape) * np.diag(affine)[:3] / 2
    return Volume(image, affine), Volume((mask >= 0.5).astype(np.uint8), affine.copy())


def with_lesion(labels: np.ndarray, lesion: np.ndarray, rng: np.random.Generator,
                ranges: SynthRanges = SynthRanges(), tissue_loss: bool = True,
                gliotic: float | None = None) -> np.ndarray:
    """A copy of ``labels`` with the lesion as cavity core and gliotic rim (mostly rim in
    ``gliotic`` of the draws, ``ranges.gliotic`` when None); with
    ``tissue_loss``, as a chronic infarct looks on T1: ex-vacuo widening of nearby CSF spaces
    (ventricle, sulci), in some draws loss of the cortex next to it, and in some strands of
    tissue crossing the cavity (encephalomalacia); all within a box around the lesion.
    ``draw_scan`` asks for the tissue loss in T1-order draws only: drawn in every contrast it
    lost a real T2's bright infarct (training/README.md, stages 22 and 22c)."""
    labels = labels.copy()
    if not lesion.any():
        return labels
    inside, pad = np.argwhere(lesion), int(ranges.ex_vacuo_reach_mm) + 6
    box = tuple(slice(max(a - pad, 0), b + pad + 1) for a, b in zip(inside.min(0), inside.max(0)))
    sub, les = labels[box], lesion[box]
    outside_mm = ndi.distance_transform_edt(~les)
    near = (outside_mm < ranges.ex_vacuo_reach_mm) & np.isin(sub, BRAIN) & ~les
    fluid = np.isin(sub, CSF)
    deep = ndi.distance_transform_edt(np.isin(sub, BRAIN)) >= VENTRICLE_DEPTH_MM
    for spaces, widths in ((fluid & deep, ranges.ex_vacuo_mm), (fluid & ~deep, ranges.sulci_mm)):
        widen = rng.uniform(*widths)
        if tissue_loss and widen > 0 and spaces.any():
            sub[near & (ndi.distance_transform_edt(~spaces) <= widen)] = CSF[0]
    if rng.random() < ranges.cortical_loss and tissue_loss:
        sub[np.isin(sub, GM) & (outside_mm <= rng.uniform(1.0, 3.0))] = CSF[0]
    depth_mm = ndi.distance_transform_edt(les)
    gliotic = ranges.gliotic if gliotic is None else gliotic
    rim_mm = ranges.gliotic_rim_mm if rng.random() < gliotic else ranges.rim_mm
    sub[les] = np.where(depth_mm[les] <= rng.uniform(*rim_mm), RIM, CORE)
    if rng.random() < ranges.strands and tissue_loss:
        sub[_strands(sub == CORE, rng, ranges)] = RIM
    labels[box] = sub
    return labels


def _strands(cavity: np.ndarray, rng: np.random.Generator, ranges: SynthRanges) -> np.ndarray:
    """Thin sheets through ``cavity``: the voxels where a smooth random field is near zero,
    ``strand_share`` of them (the septa and spared tissue of encephalomalacia)."""
    if not cavity.any():
        return cavity
    field = ndi.gaussian_filter(rng.standard_normal(cavity.shape, dtype=np.float32),
                                rng.uniform(*ranges.strand_mm) / 2, truncate=2.5)
    near_zero = np.abs(field[cavity])
    return cavity & (np.abs(field) <= np.quantile(near_zero, rng.uniform(*ranges.strand_share)))


def _painted(anatomy: LabelAnatomy, lesion: np.ndarray, rng: np.random.Generator,
             ranges: SynthRanges) -> tuple[np.ndarray, np.ndarray]:
    """The anatomy's own T1 with the lesion painted by ``synth.synthesize_case`` (bias field
    and noise included), skull-stripped in some draws, then deformed (trilinear)."""
    image, mask = synthesize_case(anatomy.source, lesion, rng)
    data = image.data.astype(np.float32)
    if anatomy.has_skull and rng.random() < ranges.strip_skull:
        data[~anatomy.source.brain] = 0.0
    both = _deform(np.stack([data, mask.data.astype(np.float32)]), rng, ranges, "bilinear")
    return both[0], both[1]


def _deform(volume: np.ndarray, rng: np.random.Generator, ranges: SynthRanges,
            mode: str = "nearest") -> np.ndarray:
    """A volume (or channels, C x volume) resampled through a random affine and a smooth elastic
    field: labels with ``mode`` nearest (uint8 back), images with bilinear (trilinear here)."""
    channels = volume if volume.ndim == 4 else volume[None]
    shape = channels.shape[1:]
    angles = np.radians(rng.uniform(-ranges.rotation_deg, ranges.rotation_deg, 3))
    rotation = _rotation(*angles)
    scale = np.diag(1.0 + rng.uniform(-ranges.scale, ranges.scale, 3))
    extent = np.asarray(shape, float) / 2  # normalised coordinates: voxels / half-extent
    matrix = np.diag(1 / extent) @ rotation @ scale @ np.diag(extent)
    shift = rng.uniform(-ranges.shift_mm, ranges.shift_mm, 3) / extent
    theta = torch.tensor(np.concatenate([matrix, shift[:, None]], 1)[::-1, [2, 1, 0, 3]].copy(),
                         dtype=torch.float32)  # grid_sample takes (x, y, z) = array (2, 1, 0)
    grid = F.affine_grid(theta[None], [1, 1, *shape], align_corners=False)
    coarse = torch.from_numpy(rng.standard_normal((1, 3, 5, 5, 5)).astype(np.float32))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)
    field *= ranges.elastic_mm * rng.uniform(0, 1) / float(coarse.abs().max())
    scale_to_grid = torch.tensor(extent[::-1].copy(), dtype=torch.float32)  # (x, y, z) order
    grid = grid + (field[0].flip(0).permute(1, 2, 3, 0) / scale_to_grid)[None]
    source = torch.from_numpy(channels.astype(np.float32, copy=False))[None]
    out = F.grid_sample(source, grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
    if mode == "nearest":
        out = out.to(torch.uint8)
    return out.numpy() if volume.ndim == 4 else out[0].numpy()


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    (ca, sa), (cb, sb), (cc, sc) = ((math.cos(t), math.sin(t)) for t in (a, b, c))
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def tissue_order(rng: np.random.Generator, ranges: SynthRanges = SynthRanges()) -> str:
    """The tissue order of one draw: T1 (``t1_like`` of the draws), T2 (``t2_like``) or any."""
    draw = rng.random()
    if draw < ranges.t1_like:
        return T1_ORDER
    return T2_ORDER if draw < ranges.t1_like + ranges.t2_like else ANY_ORDER


def label_intensities(rng: np.random.Generator, ranges: SynthRanges = SynthRanges(),
                      order: str | None = None) -> tuple[np.ndarray, int | None]:
    """Mean intensity (0..1) of each label for one draw in ``order`` (drawn when None), and the
    CSF class whose level (and texture) the lesion core takes, or None."""
    means = rng.uniform(0.0, 1.0, N_LABELS)
    order = tissue_order(rng, ranges) if order is None else order
    if order == T1_ORDER:
        wm = rng.uniform(0.7, 1.0)
        levels = (wm * rng.uniform(0.05, 0.35), wm * rng.uniform(0.55, 0.85), wm)
        means[OTHER] = wm * rng.uniform(0.0, 0.3)  # bone and air: dark in a T1 scan
    elif order == T2_ORDER:
        csf = rng.uniform(0.7, 1.0)
        gm = csf * rng.uniform(0.4, 0.75)
        levels = (csf, gm, gm * rng.uniform(0.6, 0.9))
    else:
        levels = ()
    for values, level, spread in zip((CSF, GM, WM), levels, (0.05, 0.06, 0.04)):
        means[list(values)] = level + rng.uniform(-spread, spread, len(values))
    if levels:
        means[list(HEAD)] = rng.uniform(0.1, 1.1, len(HEAD))
    csf = float(means[list(CSF)].mean())
    tissue = float(means[list(GM) + list(WM)].mean())
    if rng.random() < ranges.core_like_csf:
        means[CORE] = csf + rng.uniform(-0.1, 0.1) * abs(tissue - csf)
    grey_white = [float(means[list(v)].mean()) for v in (GM, WM)]
    means[CORE] = _visible(float(means[CORE]), csf, grey_white, ranges.lesion_contrast, rng)
    fluid = _cavity_like_csf(means, rng, ranges) if order == T1_ORDER else None
    if fluid is not None:
        means[CORE] = means[fluid]
    means[RIM] = means[CORE] + rng.uniform(0.2, 0.8) * (tissue - means[CORE])
    means[BACKGROUND] = 0.0
    return np.clip(means, 0.0, 1.2), fluid


def _visible(core: float, csf: float, tissues: list[float], contrast: float,
             rng: np.random.Generator) -> float:
    """``core``, or, where it lies within ``contrast`` of a tissue level, a level beyond the
    tissues on the CSF's side (else the other side, else midway): a mask drawn over a lesion
    that cannot be seen would teach the network to mark lesions where they usually lie."""
    if min(abs(core - t) for t in tissues) >= contrast:
        return core
    lo, hi = min(tissues), max(tissues)
    below, above = lo - contrast - rng.uniform(0, 0.1), hi + contrast + rng.uniform(0, 0.1)
    sides = (below, above) if csf < (lo + hi) / 2 else (above, below)
    return next((v for v in sides if 0.0 <= v <= 1.2), (lo + hi) / 2)


def _paint(labels: np.ndarray, rng: np.random.Generator, ranges: SynthRanges,
           order: str | None = None) -> np.ndarray:
    """Intensities per label in ``order`` (drawn when None), a mottled lesion (or a cavity of
    plain CSF), texture, and partial-volume blur."""
    means, fluid = label_intensities(rng, ranges, order)
    means = means.astype(np.float32)
    sds = rng.uniform(*ranges.texture, N_LABELS).astype(np.float32)
    sds[BACKGROUND] = 0.0
    if fluid is not None:
        sds[CORE] = sds[fluid]
    image = means[labels]
    mottled = labels if fluid is None else np.where(labels == CORE, BACKGROUND, labels)
    _mottle(image, mottled, float(means[list(GM + WM)].mean()), rng.uniform(*ranges.mottle), rng)
    image += sds[labels] * rng.standard_normal(labels.shape, dtype=np.float32)
    return ndi.gaussian_filter(image, rng.uniform(*ranges.blur_mm), truncate=2.5)


def _cavity_like_csf(means: np.ndarray, rng: np.random.Generator,
                     ranges: SynthRanges) -> int | None:
    """The CSF class whose level and texture the cavity takes in this T1-order draw
    (``cavity_like_csf`` of them, where every CSF class stands ``lesion_contrast`` clear of the
    grey and white matter), else None: a chronic cavity is fluid, told from CSF only by its shape
    and place."""
    if rng.random() >= ranges.cavity_like_csf:
        return None
    tissues = [float(means[list(v)].mean()) for v in (GM, WM)]
    if min(abs(means[c] - t) for c in CSF for t in tissues) < ranges.lesion_contrast:
        return None
    return int(rng.choice(CSF))


def _mottle(image: np.ndarray, labels: np.ndarray, tissue: float, pull: float,
            rng: np.random.Generator) -> None:
    """Pull the lesion's voxels towards the ``tissue`` level by up to ``pull`` (a smooth random
    field, 8 mm grain), in place: chronic lesions mix cavity, gliosis and spared tissue."""
    lesion = (labels == CORE) | (labels == RIM)
    if pull <= 0 or not lesion.any():
        return
    inside = np.argwhere(lesion)
    box = tuple(slice(a, b + 1) for a, b in zip(inside.min(0), inside.max(0)))
    shape = tuple(b.stop - b.start for b in box)
    coarse = rng.random((1, 1, *(n // 8 + 2 for n in shape)), dtype=np.float32)
    field = F.interpolate(torch.from_numpy(coarse), size=shape, mode="trilinear",
                          align_corners=True)[0, 0].numpy()
    sub, les = image[box], lesion[box]
    sub[les] += pull * field[les] * (tissue - sub[les])


def _field_of_view_and_slices(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                              ranges: SynthRanges) -> tuple[np.ndarray, np.ndarray, int]:
    """Crop each side of the field of view; some draws get thick axial slices."""
    reach = (ranges.crop_mm / 2, ranges.crop_mm / 2, ranges.crop_mm)  # more below (neck), above
    crop = [slice(int(rng.uniform(0, r)), n - int(rng.uniform(0, r / 2 if axis == 2 else r)))
            for axis, (n, r) in enumerate(zip(image.shape, reach))]
    image, mask = image[tuple(crop)], mask[tuple(crop)]
    if rng.random() >= ranges.thick_slices:
        return np.ascontiguousarray(image), np.ascontiguousarray(mask), 1
    thickness = int(rng.integers(ranges.slice_mm[0], ranges.slice_mm[1] + 1))
    offset = int(rng.integers(thickness))
    sigma = (0, 0, thickness / 2.355)  # the slice profile: FWHM = thickness
    image = ndi.gaussian_filter(image, sigma, truncate=2.0)[:, :, offset::thickness]
    mask = ndi.gaussian_filter(mask, sigma, truncate=2.0)[:, :, offset::thickness]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), thickness


def _artefacts(image: np.ndarray, where: np.ndarray, rng: np.random.Generator,
               ranges: SynthRanges) -> np.ndarray:
    """Bias field (computed on a coarse grid), gamma, Rician noise."""
    coarse_shape = tuple(max(2, n // 8) for n in image.shape)
    shrink = [c / n for c, n in zip(coarse_shape, image.shape)]
    coarse_where = ndi.zoom(where.astype(np.float32), shrink, order=0) > 0.5
    if not coarse_where.any():
        coarse_where[:] = True
    field = _bias_field(coarse_shape, coarse_where, rng.uniform(*ranges.bias), rng)
    field = F.interpolate(torch.from_numpy(field)[None, None], size=image.shape, mode="trilinear",
                          align_corners=False)[0, 0].numpy()
    image = np.clip(image * field, 0.0, None) ** math.exp(rng.uniform(*np.log(ranges.gamma)))
    brightest = float(np.percentile(image[where], 99)) if where.any() else 1.0
    sigma = rng.uniform(*ranges.noise) * brightest
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
