"""Building blocks of D-UNet and its comparison models (paper Table 1; docs/architecture.md).

Keras conventions are kept where they change numbers: BatchNorm momentum 0.99 (PyTorch 0.01),
epsilon 1e-3, and "same" padding of even kernels (0 before, 1 after on each axis).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.01  # Keras momentum 0.99
BN_EPS = 1e-3


class ConvBlock(nn.Module):
    """Twice (3x3 conv with bias -> [BatchNorm] -> ReLU); ``dims`` 2 or 3 (3x3x3 convs)."""

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2, batch_norm: bool = True):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(conv(c_in, out_channels, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(norm(out_channels, momentum=BN_MOMENTUM, eps=BN_EPS))
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SqueezeExcite(nn.Module):
    """SE block: global average pool -> dense c/r (ReLU, no bias) -> dense c (sigmoid, no bias)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.squeeze = nn.Linear(channels, channels // reduction, bias=False)
        self.excite = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3))
        w = torch.sigmoid(self.excite(torch.relu(self.squeeze(w))))
        return x * w[:, :, None, None]


class DimensionFusion(nn.Module):
    """Dimension transform block (paper eq. 1-2): 3D features reduced to 2D and added to 2D ones.

    3D ``(B, C, D, H, W)`` -> 1x1x1 conv to 1 filter (linear) -> depth becomes channels
    ``(B, D, H, W)`` -> 3x3 conv to C + ReLU -> [SE]; 2D ``(B, C, H, W)`` -> [SE]; sum.
    """

    def __init__(self, channels: int, depth: int, squeeze_excite: bool = True,
                 se_reduction: int = 16):
        super().__init__()
        self.reduce_channels = nn.Conv3d(channels, 1, kernel_size=1)
        self.depth_to_channels = nn.Conv2d(depth, channels, kernel_size=3, padding=1)
        se = (lambda: SqueezeExcite(channels, se_reduction)) if squeeze_excite else nn.Identity
        self.se_3d = se()
        self.se_2d = se()

    def forward(self, features_2d: torch.Tensor, features_3d: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce_channels(features_3d).squeeze(1)
        reduced = torch.relu(self.depth_to_channels(reduced))
        return self.se_3d(reduced) + self.se_2d(features_2d)


class UpBlock(nn.Module):
    """Nearest 2x upsampling -> 2x2 conv (Keras "same") + ReLU -> concat [skip, up] -> ConvBlock.

    ``scale`` is the upsampling factor per spatial axis; 3D UNet uses (1, 2, 2) (depth kept).
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2,
                 batch_norm: bool = True, scale: tuple[int, ...] | None = None):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.scale = scale or (2,) * dims
        self.up_conv = conv(in_channels, out_channels, kernel_size=2)
        self.block = ConvBlock(2 * out_channels, out_channels, dims, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        x = F.pad(x, (0, 1) * (x.dim() - 2))  # Keras "same" for an even kernel
        x = torch.relu(self.up_conv(x))
        return self.block(torch.cat([skip, x], dim=1))


def init_keras_style(model: nn.Module, head: nn.Module) -> None:
    """He-normal convolutions, Glorot-uniform head and dense layers, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            if m is head:
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
