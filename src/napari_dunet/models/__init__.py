"""Model registry: every model of the paper's Tables 2 and 5, by name.

``build_model(name)`` returns a fresh, initialised model. All models take ``(B, 4, 192, 192)``
stacks and return ``(B, 1, 192, 192)`` probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from .. import options
from ..errors import DunetError
from .unet2d import DUNet
from .unet3d import UNet3D

DEFAULT_MODEL = options.DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    name: str
    paper_name: str
    paper_params: int  # Keras convention, paper Tables 2 and 5
    factory: Callable[[], nn.Module]


def _fusion(stages: tuple[int, ...], se: bool, se_reduction: int = 16) -> Callable[[], nn.Module]:
    return partial(DUNet, fusion_stages=stages, squeeze_excite=se, se_reduction=se_reduction)


_SPECS = [
    ModelSpec("dunet", "D-UNet (SEAdd-23)", 8_640_163, _fusion((2, 3), True)),
    ModelSpec("unet2d-transform", "2D UNet (transform)", 7_771_297,
              partial(DUNet, in_channels=1, fusion_stages=())),
    ModelSpec("unet2d-original", "2D UNet (original)", 31_030_593,
              partial(DUNet, in_channels=1, base_width=64, batch_norm=False, fusion_stages=())),
    ModelSpec("unet3d-transform", "3D UNet (transform)", 22_597_826, UNet3D),
    ModelSpec("add-1", "Add-1", 7_802_210, _fusion((1,), False)),
    ModelSpec("add-12", "Add-12", 7_970_019, _fusion((1, 2), False)),
    ModelSpec("add-23", "Add-23", 8_635_043, _fusion((2, 3), False)),
    ModelSpec("add-123", "Add-123", 8_636_260, _fusion((1, 2, 3), False)),
    ModelSpec("seadd-12", "SEAdd-12", 7_971_299, _fusion((1, 2), True)),
    ModelSpec("seadd-23", "SEAdd-23 (= D-UNet)", 8_640_163, _fusion((2, 3), True)),
    # The paper's SEAdd-123 count is met only with an SE reduction ratio of 8 (16 elsewhere).
    ModelSpec("seadd-123", "SEAdd-123", 8_647_012, _fusion((1, 2, 3), True, se_reduction=8)),
]
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
options.agree("model", MODELS, options.MODELS)


def build_model(name: str = DEFAULT_MODEL) -> nn.Module:
    """A freshly initialised model; unknown names raise a ``DunetError`` listing the choices."""
    key = name.lower()
    if key not in MODELS:
        raise DunetError(f"Unknown model {name!r}; choose one of: {', '.join(MODELS)}.")
    return MODELS[key].factory()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(PyTorch ``parameters()`` count, Keras-convention count).

    Keras also counts BatchNorm running mean and variance, which PyTorch keeps as buffers.
    """
    torch_count = sum(p.numel() for p in model.parameters())
    running = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return torch_count, torch_count + running
