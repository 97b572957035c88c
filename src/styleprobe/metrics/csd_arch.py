"""CSD's architectures and its Hub mirror's names, apart from the model code so that a metric's config is checked
without importing torch (`csd.py` validates with them, `csd_model.py` builds with them)."""

from __future__ import annotations

from dataclasses import dataclass

HUB_REPO = "tomg-group-umd/CSD-ViT-L"
HUB_FILENAME = "pytorch_model.bin"


@dataclass(frozen=True)
class CSDArch:
    """The vision tower's shape. `vit_large` is CSD's published model; `tiny` the random offline stand-in; `toy`
    the toy world's trained one."""

    width: int
    layers: int
    head_width: int
    patch_size: int
    image_size: int
    style_dim: int


ARCHS = {
    "vit_large": CSDArch(width=1024, layers=24, head_width=64, patch_size=14, image_size=224, style_dim=768),
    "tiny": CSDArch(width=32, layers=2, head_width=16, patch_size=32, image_size=224, style_dim=24),
    "toy": CSDArch(width=64, layers=4, head_width=16, patch_size=32, image_size=224, style_dim=32),  # the toy world's
}
