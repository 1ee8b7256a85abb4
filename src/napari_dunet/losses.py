"""Loss functions of the paper (eqs. 3-5; docs/architecture.md, "Loss"), for probabilities ``p``
and binary targets ``g``.

Inputs are tensors of the same shape, a single map ``(H, W)`` or a batch ``(B, 1, H, W)``; the
sums and means run over every element of the batch. ``p`` may be exactly 0 or 1: the focal term
clips it to ``[eps, 1 - eps]`` and the Dice terms are smoothed by ``delta``, so value and gradient
stay finite.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import options
from .errors import InputError

EPS = 1e-7
ALPHA = 0.48  # the authors' code (the paper's text swaps alpha and gamma)
GAMMA = 1.1
DELTA = 1.0


def soft_dice(p: torch.Tensor, g: torch.Tensor, delta: float = DELTA) -> torch.Tensor:
    """``(2 sum(p g) + delta) / (sum(p^2) + sum(g^2) + delta)``; 1 when both are empty."""
    return (2 * (p * g).sum() + delta) / ((p * p).sum() + (g * g).sum() + delta)


def dice_loss(p: torch.Tensor, g: torch.Tensor, delta: float = DELTA) -> torch.Tensor:
    """DL = 1 - soft Dice (paper eq. 4)."""
    return 1 - soft_dice(p, g, delta)


def focal_loss(p: torch.Tensor, g: torch.Tensor, alpha: float = ALPHA,
               gamma: float = GAMMA) -> torch.Tensor:
    """Voxel-averaged focal loss FL/N (paper eq. 3 divided by the number of pixels).

    ``-mean(alpha (1-p)^gamma log p [g=1]) - mean((1-alpha) p^gamma log(1-p) [g=0])``, both means
    over all pixels, with ``p`` clipped to ``[1e-7, 1 - 1e-7]``.
    """
    p = p.clamp(EPS, 1 - EPS)
    fg = alpha * (1 - p) ** gamma * torch.log(p) * g
    bg = (1 - alpha) * p ** gamma * torch.log(1 - p) * (1 - g)
    return -fg.mean() - bg.mean()


def enhanced_mixing_loss(p: torch.Tensor, g: torch.Tensor, alpha: float = ALPHA,
                         gamma: float = GAMMA, delta: float = DELTA) -> torch.Tensor:
    """EML = FL/N - log(soft Dice) (paper eq. 5); the Dice term uses the unclipped ``p``."""
    return focal_loss(p, g, alpha, gamma) - torch.log(soft_dice(p, g, delta))


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "eml": enhanced_mixing_loss,
    "focal": focal_loss,
    "dice": dice_loss,
}
options.agree("loss", LOSSES, options.LOSSES)


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss by name: ``eml`` (default of the paper), ``focal`` or ``dice``."""
    try:
        return LOSSES[name.lower()]
    except KeyError:
        raise InputError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}.") from None
