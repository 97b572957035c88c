"""ImageReward's ViT sizes, apart from the network (`blip.py`), so a metric config is checked without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VitArch:
    """BLIP's ViT sizes (models/BLIP/blip.py `create_vit`); heads are not in the weights, so they are named here."""

    width: int
    depth: int
    heads: int
    patch: int = 16
    image_size: int = 224


VIT_ARCHS = {
    "vit_large": VitArch(1024, 24, 16),  # create_vit('large'), ImageReward's
    "tiny": VitArch(32, 2, 2),  # styleprobe's offline stand-in
}
