"""Weights shipped inside the package; ``MODEL_CARD.md`` beside this file describes them."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).with_name("dunet_default.safetensors")


def default_checkpoint() -> Path | None:
    """The bundled default D-UNet checkpoint, or None when this installation has none."""
    return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else None
