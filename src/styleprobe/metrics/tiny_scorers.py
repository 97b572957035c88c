"""Tiny random stand-ins for the scoring models, so the tiny sweep is scored offline.

Each is saved in its real model's format and read back through the same loader as the real weights:
an open_clip model config + checkpoint file, Hugging Face ViT (DINO) and DINOv2 folders, and a CSD
`checkpoint.pth` in the original format (`model_state_dict`, `module.` prefixes). Their input sizes and
preprocessing are the real ones (224 px crops); only width and depth are small. Their numbers check the
machinery and are not science: the table names them "tiny random ...".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from styleprobe.disk import default_cache_dir
from styleprobe.models.tiny import build_once

if TYPE_CHECKING:  # torch is imported where weights are made: finding the built folder never waits for it
    import torch

VERSION = "tiny-scorers-v1"
SEED = 20240520
TINY_CLIP_NAME = "styleprobe-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def ensure_tiny_scorers(cache_dir: Path | None = None) -> Path:
    """The folder of tiny scorer weights, built first (atomically, a few seconds) if absent."""
    root = (cache_dir or default_cache_dir()) / VERSION
    return build_once(root, _build, {"version": VERSION, "seed": SEED})


def tiny_open_clip(cache_dir: Path | None = None) -> tuple[str, str]:
    """(model name, checkpoint path) of the tiny open_clip model, its config registered with open_clip."""
    import open_clip

    root = ensure_tiny_scorers(cache_dir)
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(root / "clip" / f"{TINY_CLIP_NAME}.json")
    return TINY_CLIP_NAME, str(root / "clip" / "open_clip_model.bin")


def write_csd_checkpoint(path: Path, arch: str = "tiny", seed: int = SEED) -> dict[str, torch.Tensor]:
    """A CSD checkpoint of random weights in the original training format; returns the unprefixed state."""
    import torch

    from styleprobe.metrics.csd_model import ARCHS, CSDModel, save_checkpoint

    torch.manual_seed(seed)
    state = CSDModel(ARCHS[arch]).state_dict()
    save_checkpoint(state, path)
    return state


def _build(root: Path) -> None:
    import open_clip
    import torch
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(SEED)
    clip_dir = root / "clip"
    clip_dir.mkdir(parents=True)
    config_path = clip_dir / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=1))
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(config_path)
    logging.disable(logging.WARNING)  # open_clip warns that a model built without weights is random: that is the point
    try:
        state = open_clip.create_model(TINY_CLIP_NAME).state_dict()
    finally:
        logging.disable(logging.NOTSET)
    torch.save(state, clip_dir / "open_clip_model.bin")

    torch.manual_seed(SEED + 1)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=224)
    ViTModel(ViTConfig(patch_size=16, **vit), add_pooling_layer=False).save_pretrained(root / "dino")
    torch.manual_seed(SEED + 2)
    Dinov2Model(Dinov2Config(patch_size=14, **vit)).save_pretrained(root / "dinov2")

    write_csd_checkpoint(root / "csd" / "checkpoint.pth", seed=SEED + 3)
