"""CSD's model (Somepalli et al. 2024, learn2phoenix/CSD) and its checkpoint format, apart from the scorer.

The architecture is the OpenAI CLIP ViT-L/14 vision tower without its projection, plus a style and a content
head, with CSD's parameter names, so the original `checkpoint.pth` (`model_state_dict`, `module.` prefixes) loads
strictly. The scorer (`csd.py`) and the tiny stand-ins (`tiny.py`) both build on it. The architectures (`ARCHS`)
and the Hub mirror's names live in `csd_arch.py`, so that a metric's config is checked without importing torch.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from styleprobe.errors import ConfigError
from styleprobe.metrics.csd_arch import ARCHS, HUB_FILENAME, HUB_REPO, CSDArch


class CSDModel(nn.Module):
    """CLIP vision tower without projection + style and content heads, with CSD's parameter names."""

    def __init__(self, arch: CSDArch):
        super().__init__()
        from open_clip.model import _build_vision_tower

        vision_cfg = {
            "layers": arch.layers,
            "width": arch.width,
            "head_width": arch.head_width,
            "patch_size": arch.patch_size,
            "image_size": arch.image_size,
        }
        self.backbone = _build_vision_tower(arch.style_dim, vision_cfg, quick_gelu=True)  # OpenAI CLIP: QuickGELU
        self.last_layer_style = nn.Parameter(self.backbone.proj.detach().clone())
        self.last_layer_content = nn.Parameter(self.backbone.proj.detach().clone())
        self.backbone.proj = None  # CSD reads the 1024-d CLS before CLIP's projection

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised style vectors, (N, style_dim)."""
        feature = self.backbone(pixels)
        return nn.functional.normalize(feature @ self.last_layer_style, dim=1, p=2)


def _checkpoint_globals() -> list[Any]:
    """The only non-tensor globals the published `checkpoint.pth` may hold besides torch's own: its training state
    (numpy scalars and dtypes, the argparse Namespace of the training run). Each builds plain data; none runs code.

    numpy scalars pickled by numpy 1.x name `numpy.core.multiarray.scalar`, by numpy 2.x `numpy._core...`: both map
    to the one function.
    """
    import argparse

    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return [argparse.Namespace, np.dtype, *dtypes, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar")]


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> None:
    """A CSDModel state in CSD's training-checkpoint format (`model_state_dict`, `module.` prefixes), as `load_csd`
    reads the published file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """CSD's state dict from `checkpoint.pth` / `pytorch_model.bin`: `model_state_dict` taken, `module.` stripped.

    Loaded with `weights_only=True` and an allow-list of the harmless globals the published file holds
    (`_checkpoint_globals`): a file that needs anything else, e.g. a crafted pickle that would run code, is
    refused with one line before anything in it runs. Fails with one line when the file is not a CSD checkpoint.
    """
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if not found:  # not a pickle that asks for code: a damaged or foreign file
            raise ConfigError(f"CSD checkpoint {path} cannot be read (not a torch checkpoint); is it CSD's checkpoint.pth?") from err
        why = f"it asks for {found.group(1)}"
        raise ConfigError(
            f"CSD checkpoint {path} needs more than tensors and plain training state to load ({why}); styleprobe does not "
            f"run code from checkpoints: download CSD's checkpoint.pth or {HUB_REPO}/{HUB_FILENAME} again"
        ) from err
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        why = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise ConfigError(f"CSD checkpoint {path} cannot be read ({type(err).__name__}: {why}); is it CSD's checkpoint.pth?") from err
    state = obj.get("model_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"CSD checkpoint {path} holds no state dict (expected a dict with 'model_state_dict'); "
            f"download CSD's checkpoint.pth or {HUB_REPO}/{HUB_FILENAME}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_csd(path: Path, arch: CSDArch) -> CSDModel:
    """Build the architecture and load the checkpoint strictly; a wrong file fails loudly, naming the keys."""
    state = read_checkpoint(path)
    model = CSDModel(arch)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"CSD checkpoint {path} does not fit CSD's model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); give CSD's checkpoint.pth or {HUB_REPO}/{HUB_FILENAME}"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise ConfigError(
            f"CSD checkpoint {path}: {len(wrong)} tensors have the wrong shape (e.g. {k} is {got}, the "
            f"{next(n for n, a in ARCHS.items() if a == arch)} model needs {want}); is metrics.<name>.arch right?"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()
