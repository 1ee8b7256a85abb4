"""D-UNet (paper Table 1) and the 2D UNets it is compared with, from one class.

``DUNet(fusion_stages=(2, 3), squeeze_excite=True)`` is the paper's final model (SEAdd-23);
``fusion_stages=()`` is a plain 2D UNet with no 3D stream.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, DimensionFusion, UpBlock, init_keras_style

STACK_SLICES = 4  # slices i-2, i-1, i, i+1
CENTRE = 2  # channel of slice i in a stack
DEPTH_AT_STAGE = {1: 4, 2: 2, 3: 1}  # 3D-stream depth after 0, 1, 2 poolings of 4 slices


class DUNet(nn.Module):
    """2D UNet encoder/decoder with an optional 3D stream fused at stages 1-3.

    Input: ``(B, 4, H, W)`` stacks of slices i-2..i+1 (H, W divisible by 16). A model built with
    ``in_channels=1`` reads only the centre slice i. Output: ``(B, 1, H, W)`` probabilities.
    """

    def __init__(self, in_channels: int = STACK_SLICES, base_width: int = 32,
                 batch_norm: bool = True, fusion_stages: tuple[int, ...] = (2, 3),
                 squeeze_excite: bool = True, se_reduction: int = 16, dropout: float = 0.3):
        super().__init__()
        widths = [base_width * 2**k for k in range(5)]  # 32, 64, 128, 256, 512
        self.in_channels = in_channels
        self.fusion_stages = tuple(sorted(fusion_stages))
        # 2D encoder: convolution blocks 1-5
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, 2, batch_norm)
            for c_in, c_out in zip([in_channels] + widths[:-1], widths))
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        # 3D stream: as deep as the deepest fused stage
        stream_depth = max(self.fusion_stages, default=0)
        self.encoder_3d = nn.ModuleList(
            ConvBlock(c_in, c_out, 3, batch_norm)
            for c_in, c_out in zip([1] + widths[:stream_depth - 1], widths[:stream_depth]))
        self.pool_3d = nn.MaxPool3d(2)
        self.fusion = nn.ModuleDict({
            str(s): DimensionFusion(widths[s - 1], DEPTH_AT_STAGE[s], squeeze_excite, se_reduction)
            for s in self.fusion_stages})
        # decoder: up-sampling blocks 1-4 (N = 256, 128, 64, 32)
        self.decoder = nn.ModuleList(
            UpBlock(widths[k + 1], widths[k], 2, batch_norm) for k in reversed(range(4)))
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        init_keras_style(self, self.head)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        x = stack[:, CENTRE:CENTRE + 1] if self.in_channels == 1 else stack
        x3d = stack.unsqueeze(1)  # (B, 1, 4, H, W): the slices become depth
        skips = []
        for stage, block in enumerate(self.encoder, start=1):
            if stage > 1:
                x = self.pool(x)
            x = block(x)
            if stage <= len(self.encoder_3d):
                x3d = self.encoder_3d[stage - 1](x3d if stage == 1 else self.pool_3d(x3d))
                if str(stage) in self.fusion:
                    x = self.fusion[str(stage)](x, x3d)
            if stage >= 4:
                x = self.dropout(x)
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return torch.sigmoid(self.head(x))
