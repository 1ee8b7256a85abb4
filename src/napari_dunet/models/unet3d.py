"""The paper's "3D UNet (transform)": 3x3x3 convolutions over the 4-slice stack.

As in the authors' code: 32..512 filters with BatchNorm, poolings of 2x2 in-plane only (the
depth of 4 is kept), a 1x1x1 conv to one channel, the depth squeezed into 4 channels, a 2D
ConvBlock(32) and a 1x1 sigmoid head. The 1x1x1 conv has a ReLU, as in that code.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, UpBlock, init_keras_style


class UNet3D(nn.Module):
    """Input ``(B, 4, H, W)`` stacks; output ``(B, 1, H, W)`` probabilities."""

    def __init__(self, base_width: int = 32, depth: int = 4, dropout: float = 0.3):
        super().__init__()
        widths = [base_width * 2**k for k in range(5)]
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, 3) for c_in, c_out in zip([1] + widths[:-1], widths))
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.ModuleList(
            UpBlock(widths[k + 1], widths[k], 3, scale=(1, 2, 2)) for k in reversed(range(4)))
        self.to_one_channel = nn.Conv3d(widths[0], 1, kernel_size=1)
        self.depth_block = ConvBlock(depth, widths[0], 2)
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        init_keras_style(self, self.head)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        x = stack.unsqueeze(1)
        skips = []
        for stage, block in enumerate(self.encoder, start=1):
            x = block(x if stage == 1 else self.pool(x))
            if stage >= 4:
                x = self.dropout(x)
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        x = torch.relu(self.to_one_channel(x)).squeeze(1)
        return torch.sigmoid(self.head(self.depth_block(x)))
