"""Shared fixtures: real data from ../shared/data, small synthetic volumes, random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ch2.nii.gz").is_file():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA


def make_head(shape=(40, 48, 12), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic 'head' (bright ellipsoid) with a dark 'lesion' blob, and its mask."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    r = ((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.42)) ** 2
    head = (r.sum(0) < 1).astype(np.float32)
    lesion_centre = centre + np.array([shape[0] * 0.15, shape[1] * 0.1, 0])
    d = ((grid - lesion_centre[:, None, None, None]) ** 2).sum(0)
    mask = ((d < (min(shape[:2]) * 0.12) ** 2) & (head > 0)).astype(np.uint8)
    image = 600 * head - 400 * mask.astype(np.float32) + rng.normal(0, 10, shape)
    return np.clip(image, 0, None).astype(np.int16), mask


@pytest.fixture
def small_nifti(tmp_path) -> tuple[Path, Path]:
    """(image path, mask path): a 40x48x12 int16 T1-like volume, 1x1x3 mm, RAS+, with a lesion."""
    image, mask = make_head()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [-20, -24, -18]
    img = nib.Nifti1Image(image, affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 2)
    img_path, mask_path = tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-01_label-L_mask.nii.gz"
    nib.save(img, img_path)
    nib.save(nib.Nifti1Image(mask, affine, img.header), mask_path)
    return img_path, mask_path


@pytest.fixture(autouse=True, scope="session")
def user_cache(tmp_path_factory):
    """The suite's own cache folder (dtype measurements, converted networks), not the user's."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def one_thread(request):
    """Training tests (modules named test_training*/test_finetune*) run torch on one thread:
    tiny networks train faster so, and do not stall when the CPU is shared."""
    if not request.module.__name__.startswith(("test_training", "test_finetune")):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model(monkeypatch) -> str:
    """A D-UNet of a quarter of the width (same code), registered for one test only."""
    from functools import partial

    from napari_dunet import options
    from napari_dunet.models import MODELS, ModelSpec
    from napari_dunet.models.unet2d import DUNet

    monkeypatch.setitem(MODELS, "dunet-tiny", ModelSpec("dunet-tiny", "D-UNet, width 8", 0,
                                                        partial(DUNet, base_width=8)))
    monkeypatch.setattr(options, "MODELS", (*options.MODELS, "dunet-tiny"))
    return "dunet-tiny"


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised D-UNet checkpoint (seeded)."""
    import torch

    from napari_dunet.checkpoint import default_metadata, save_checkpoint
    from napari_dunet.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "dunet_random.safetensors"
    save_checkpoint(path, build_model("dunet"), default_metadata("dunet", provenance={"note": "random"}))
    return path
