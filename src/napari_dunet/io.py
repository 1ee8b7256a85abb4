"""NIfTI reading and writing, and discovery of cases in ATLAS folder layouts.

Affine and header travel with the data (``Volume``) so that masks written back line up with
the scan in every other tool (qform/sform codes survive). Writes are atomic: a temporary file
beside the target is renamed over it only once complete.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from .errors import InputError, OutputExistsError
from .geometry import voxel_sizes

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """A 3D array with the affine and header of the file it came from (or will go to)."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header = field(default_factory=nib.Nifti1Header)
    path: Path | None = None

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm, from the affine."""
        return voxel_sizes(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """The NIfTI files in ``folder`` (and its subfolders), sorted, hidden files left out."""
    found = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in found if p.is_file() and is_nifti(p) and not p.name.startswith("."))


def strip_nifti_suffix(path: str | os.PathLike) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(path: str | os.PathLike, check_finite: bool = True) -> Volume:
    """Read a 3D NIfTI (a 4D file with a singleton 4th axis is accepted).

    Raises ``InputError`` for a missing, non-NIfTI, truncated or corrupt file, a data type
    that is not real numbers (RGB, complex), a singular affine, a volume that is not 3D, has no
    slices, or (``check_finite``) contains NaN/Inf voxels.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a NIfTI file.")
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    if not is_nifti(path):
        raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz).")
    try:
        with _quiet_nibabel():  # nibabel logs header problems; the error below says them
            img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{path}: not a NIfTI-1/2 image.")
        check_dtype(img.get_data_dtype(), path)
        data = np.asanyarray(img.dataobj)
    except InputError:
        raise
    except HeaderDataError as exc:
        raise InputError(f"{path}: the NIfTI header cannot be used ({exc}).") from exc
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile,
            nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: cannot read the file ({exc}); it may be truncated or corrupt.") from exc
    affine = img.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        used = "sform" if int(img.header["sform_code"]) else "qform"
        raise InputError(f"{path}: the header's {used} affine is singular (a voxel axis has no "
                         f"length or two axes coincide), so the scan has no geometry; fix the "
                         f"header (e.g. with fslorient or nibabel).")
    return Volume(as_3d(data, path, check_finite), affine.copy(), img.header.copy(), path)


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def check_dtype(dtype: np.dtype, source: object = "volume") -> None:
    """Raise ``InputError`` unless ``dtype`` holds real numbers (not RGB, complex or objects)."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None:
        raise InputError(f"{source}: an RGB colour image, not a grey-level scan.")
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{source}: complex-valued data ({dtype}); save the magnitude image "
                         f"and segment that.")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise InputError(f"{source}: voxels of type {dtype} are not numbers.")


def as_3d(data: np.ndarray, source: object = "volume", check_finite: bool = True) -> np.ndarray:
    """Validate an array as a 3D volume of real numbers (a singleton 4th axis is dropped)."""
    data = np.asarray(data)
    check_dtype(data.dtype, source)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        kind = "a 4D series" if data.ndim == 4 else f"{data.ndim}D"
        raise InputError(f"{source}: expected a 3D volume, got {kind} with shape {data.shape}.")
    if min(data.shape) < 1:
        raise InputError(f"{source}: the volume has no voxels (shape {data.shape}).")
    if check_finite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.size(data) - np.isfinite(data).sum())
        raise InputError(f"{source}: {bad} voxels are NaN or infinite; fix or mask them first.")
    return data


#: Marks the temporary file of a write in progress: ``.<target name>.partial-<pid>-<random>``.
PARTIAL = ".partial-"


def user_cache_dir() -> Path:
    """napari-dunet's folder in the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "napari-dunet"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None],
                 overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The temporary file is ``.<name>.partial-<pid>-<random><suffixes>``; those that earlier,
    interrupted writes of the same target left (their process is gone) are removed first.
    Nothing is left behind if ``write`` fails; an existing ``path`` is kept unless ``overwrite``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite (or choose another name).")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder; give a folder for the output.")
    suffix = "".join(path.suffixes[-2:]) or ".tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL}{os.getpid()}-",
                                   suffix=suffix, dir=folder)
    except PermissionError as exc:
        raise InputError(f"cannot write in {folder}: permission denied.") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}.") from exc
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def remove_partial_writes(path: Path) -> list[Path]:
    """Delete the temporary files of interrupted writes of ``path`` (their process has ended)."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{PARTIAL}*"):
        pid = tmp.name[len(path.name) + len(PARTIAL) + 1:].split("-", 1)[0]
        if pid.isdigit() and _running(int(pid)):
            continue  # another process is writing the same target right now
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def save_volume(data: np.ndarray, reference: Volume, path: str | os.PathLike, *,
                dtype: type = np.uint8, overwrite: bool = False) -> Path:
    """Write ``data`` on the reference's grid with its affine **and header** (codes preserved)."""
    data = np.asarray(data)
    if data.shape != reference.data.shape[:3]:
        raise InputError(f"cannot save an array of shape {data.shape} on a grid of shape "
                         f"{reference.data.shape[:3]}.")
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    if dtype == np.uint8:
        header.set_slope_inter(1, 0)
    img = nib.Nifti1Image(data.astype(dtype), reference.affine, header)
    # the reference's qform/sform codes, exactly; codes 0/0 carry only the voxel size (other
    # tools then read the header's base affine), so where that is not the reference's affine
    # (an array that never came from a file), the affine is written as "aligned" (2)
    qcode, scode = int(reference.header["qform_code"]), int(reference.header["sform_code"])
    if qcode == scode == 0 and not np.allclose(img.header.get_base_affine(), reference.affine,
                                               atol=1e-4):
        qcode = scode = 2
    if qcode or scode:
        img.set_qform(reference.affine, qcode)
        img.set_sform(reference.affine, scode)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite)


def save_mask(mask: np.ndarray, reference: Volume, path: str | os.PathLike, *,
              overwrite: bool = False) -> Path:
    """Write a binary mask as uint8 0/1 aligned with ``reference``."""
    return save_volume(np.asarray(mask) > 0, reference, path, dtype=np.uint8, overwrite=overwrite)


def load_mask(path: str | os.PathLike) -> Volume:
    """Read a mask; values > 0.5 are lesion (data returned as uint8 0/1)."""
    vol = load_volume(path)
    vol.data = (vol.data > 0.5).astype(np.uint8)
    return vol


# ---- case discovery -----------------------------------------------------------------------

@dataclass
class Case:
    """One scan: its T1 image and the lesion mask files (united) if any."""

    name: str
    image: Path
    masks: list[Path] = field(default_factory=list)

    def load_mask(self, reference: Volume | None = None) -> Volume | None:
        """The union of the mask files, or None if the case has none."""
        if not self.masks:
            return None
        vols = [load_mask(p) for p in self.masks]
        shape = (reference.data.shape if reference is not None else vols[0].data.shape)
        for p, v in zip(self.masks, vols):
            if v.data.shape != shape:
                raise InputError(f"{p}: mask shape {v.data.shape} differs from the image's {shape}.")
        union = np.logical_or.reduce([v.data > 0 for v in vols]).astype(np.uint8)
        return Volume(union, vols[0].affine, vols[0].header, self.masks[0])


_MASK_WORDS = re.compile(r"(_mask|lesion|_label|_seg|_roi)", re.IGNORECASE)
_BIDS_T1 = re.compile(r"_T1w$")


def is_mask_name(path: str | os.PathLike) -> bool:
    """True for file names that denote lesion masks (BIDS ``_mask``, ``lesion``, ``_label`` ...)."""
    return bool(_MASK_WORDS.search(strip_nifti_suffix(path)))


def case_name(path: str | os.PathLike) -> str:
    """Case identifier from a file name: BIDS ``sub-X_ses-Y`` entities, else the stem."""
    stem = strip_nifti_suffix(path)
    entities = re.findall(r"(sub-[A-Za-z0-9]+|ses-[A-Za-z0-9]+)", stem)
    if entities:
        return "_".join(dict.fromkeys(entities))
    return _MASK_WORDS.split(stem)[0].rstrip("_-") or stem


def find_cases(root: str | os.PathLike) -> list[Case]:
    """Cases under ``root``: a single NIfTI file, or a folder in ATLAS v2.0 BIDS, R1.1, or flat layout.

    Images are the NIfTI files whose names are not mask names; masks are matched to the image in
    the same folder (BIDS: same ``sub``/``ses``; R1.1: every lesion file of the case folder).
    """
    root = Path(root)
    if root.is_file():
        return [Case(case_name(root), root, [])]
    if not root.is_dir():
        raise InputError(f"{root}: no such file or folder.")
    files = nifti_files(root)
    images = [p for p in files if not is_mask_name(p)]
    masks = [p for p in files if is_mask_name(p)]
    cases = []
    for image in images:
        key = case_name(image)
        siblings = [m for m in masks if m.parent == image.parent or image.parent in m.parents]
        same_case = [m for m in siblings if case_name(m) == key]
        n_images_here = sum(1 for i in images if i.parent == image.parent)
        # R1.1 layout: one T1 per folder with several lesion files named differently
        chosen = same_case or (siblings if n_images_here == 1 else [])
        cases.append(Case(key, image, chosen))
    if not cases:
        raise InputError(f"{root}: no NIfTI images found.")
    return cases
