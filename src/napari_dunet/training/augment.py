"""Random affine augmentation of a batch, identical for stacks and masks (paper's recipe).

One random transform per sample: shift up to 10% of the width/height, zoom 0.8-1.2 (each axis
on its own, as Keras' ``ImageDataGenerator`` draws it), rotation up to 20 degrees and a
left-right flip with probability 1/2. Stacks are resampled bilinearly, masks bilinearly and then
re-binarised at 0.5; anything shifted in from outside the image is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError


@dataclass(frozen=True)
class Augmentation:
    shift: float = 0.1  # fraction of the image size
    zoom: float = 0.2  # zoom factors drawn from [1 - zoom, 1 + zoom]
    rotation: float = 20.0  # degrees
    flip: bool = True  # left-right


def random_affines(batch: int, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """``(batch, 2, 3)`` affine matrices in ``affine_grid``'s normalised coordinates."""
    def uniform() -> torch.Tensor:
        return torch.rand(batch, generator=generator, dtype=torch.float64) * 2 - 1

    angle = uniform() * math.radians(aug.rotation)
    zoom_x, zoom_y = 1 + uniform() * aug.zoom, 1 + uniform() * aug.zoom
    shift_x, shift_y = uniform() * 2 * aug.shift, uniform() * 2 * aug.shift  # [-1, 1] spans 2
    flip = torch.rand(batch, generator=generator, dtype=torch.float64) < 0.5
    mirror = torch.where(flip & aug.flip, -1.0, 1.0).double()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos * zoom_x * mirror, -sin * zoom_y, shift_x], dim=1),
        torch.stack([sin * zoom_x * mirror, cos * zoom_y, shift_y], dim=1),
    ], dim=1)
    return theta.float()


def augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
                  aug: Augmentation = Augmentation()) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random transform per sample to ``(B, C, H, W)`` stacks and ``(B, 1, H, W)`` masks.

    Random numbers come from ``generator`` (CPU), so a seeded run is reproducible on any device.
    """
    theta = random_affines(images.shape[0], aug, generator).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return images, (masks >= 0.5).to(images.dtype)


def random_crops(images: torch.Tensor, masks: torch.Tensor, size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one ``size`` x ``size`` window per sample from ``(B, C, H, W)`` stacks and masks.

    A sample with lesion gets a window around one of its lesion pixels (drawn at random, the
    window placed so that pixel lies anywhere in its middle half); a sample without lesion gets a
    window anywhere. Patch training: about ``(H / size) ** 2`` times fewer pixels per step, and
    the fully convolutional network still segments whole slices afterwards.
    """
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise InputError(f"The crop size {size} exceeds the {height}x{width} input.")
    if size == height == width:
        return images, masks
    out_images, out_masks = [], []
    for image, mask in zip(images, masks):
        # four draws per sample (one unused) as the default weights were trained: same stream
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        lesion = torch.nonzero(mask[0].cpu())
        if len(lesion):
            y, x = lesion[min(int(draws[0] * len(lesion)), len(lesion) - 1)].tolist()
            top = y - int(size / 4 + draws[1] * size / 2)
            left = x - int(size / 4 + draws[2] * size / 2)
        else:
            top = int(draws[1] * (height - size + 1))
            left = int(draws[2] * (width - size + 1))
        top, left = min(max(top, 0), height - size), min(max(left, 0), width - size)
        out_images.append(image[:, top:top + size, left:left + size])
        out_masks.append(mask[:, top:top + size, left:left + size])
    return torch.stack(out_images), torch.stack(out_masks)
