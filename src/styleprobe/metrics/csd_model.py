"""CSD's model (Somepalli et al. 2024, learn2phoenix/CSD) and its checkpoint format, apart from the scorer.

The architecture is the OpenAI CLIP ViT-L/14 vision tower without its projection, plus a style and a content
head, with CSD's parameter names, so the original `checkpoint.pth` (`model_state_dict`, `module.` prefixes, the
training run's optimizer state beside it) loads as CSD's own code loads it (`load_csd`). The scorer (`csd.py`) and
the tiny stand-ins (`tiny.py`) both build on it. The architectures (`ARCHS`) and the Hub mirror's names live in
`csd_arch.py`, so that a metric's config is checked without importing torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from styleprobe.errors import ConfigError
from styleprobe.metrics.csd_arch import ARCHS, HUB_FILENAME, HUB_REPO, CSDArch
from styleprobe.metrics.safe_load import read_weights, refused_global, tensor_dict

__all__ = ["ARCHS", "CSDModel", "load_csd", "read_checkpoint", "refused_global", "save_checkpoint"]

log = logging.getLogger(__name__)


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


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> None:
    """A CSDModel state in CSD's training-checkpoint format (`model_state_dict`, `module.` prefixes), as `load_csd`
    reads the published file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """CSD's state dict from `checkpoint.pth` / `pytorch_model.bin`: `model_state_dict` taken, `module.` stripped.

    Read by `safe_load.read_weights`: weights-only, with an allow-list of the harmless globals the published file
    holds (the training run's numpy scalars and argparse Namespace); a file that needs anything else, e.g. a crafted
    pickle that would run code, is refused with one line naming what it asks for, before anything in it runs.
    Fails with one line when the file is not a CSD checkpoint.
    """
    fix = f"download CSD's checkpoint.pth or {HUB_REPO}/{HUB_FILENAME} again"
    obj = read_weights(path, "CSD checkpoint", fix)
    state = tensor_dict(obj, "CSD checkpoint", path, f"download CSD's checkpoint.pth or {HUB_REPO}/{HUB_FILENAME}",
                        "model_state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


#: CSD's content head: the projection matrix, or the MLP of CSD's `content_proj_head=custom` training. Not part of the
#: style score; loaded when it fits, ignored otherwise, never an error or a warning.
CONTENT_HEAD = "last_layer_content"


def _scored(key: str) -> bool:
    """Whether a state-dict key is part of the style score: the vision tower or the style head."""
    return key.startswith("backbone.") or key == "last_layer_style"


def _content_head(key: str) -> bool:
    return key == CONTENT_HEAD or key.startswith(f"{CONTENT_HEAD}.")


def load_csd(path: Path, arch: CSDArch) -> CSDModel:
    """Build the architecture and load the checkpoint as CSD's own code does (`model_state_dict`, `module.` stripped,
    strict=False), with the checks strictness gave: every weight of the backbone and the style head must be there
    with its shape (else one line naming a few), and keys outside them (another head, extra buffers) are ignored
    with a warning naming a few. CSD's content head loads when it fits (see CONTENT_HEAD)."""
    state = read_checkpoint(path)
    model = CSDModel(arch)
    expected = {k: v for k, v in model.state_dict().items() if _scored(k)}
    _check_fit(path, state, expected, arch)
    ignored = sorted(k for k in state if not _scored(k) and not _content_head(k))
    if ignored:
        log.warning("CSD checkpoint %s: %d keys outside CSD's backbone and style head are ignored (e.g. %s)", path,
                    len(ignored), ", ".join(ignored[:3]))
    weights = {k: state[k].float() for k in expected}
    content = state.get(CONTENT_HEAD)
    if content is not None and content.shape == model.last_layer_content.shape:
        weights[CONTENT_HEAD] = content.float()
    model.load_state_dict(weights, strict=False)
    return model.eval()


def _check_fit(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], arch: CSDArch) -> None:
    """Fail with one line when the checkpoint's backbone or style head is not the architecture's."""
    name = next(n for n, a in ARCHS.items() if a == arch)
    fix = f"give CSD's checkpoint.pth or {HUB_REPO}/{HUB_FILENAME}, or set metrics.<name>.arch to the checkpoint's"
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConfigError(
            f"CSD checkpoint {path} lacks {len(missing)} of the {len(expected)} backbone and style-head weights of the "
            f"{name} model (e.g. {', '.join(missing[:3])}); {fix}"
        )
    extra = sorted(k for k in state if _scored(k) and k not in expected)
    if extra:  # a deeper tower, or CLIP's projection: scores would come from another model than the file's
        raise ConfigError(
            f"CSD checkpoint {path} has {len(extra)} backbone weights the {name} model lacks "
            f"(e.g. {', '.join(extra[:3])}); {fix}"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise ConfigError(
            f"CSD checkpoint {path}: {len(wrong)} tensors have the wrong shape (e.g. {k} is {got}, the "
            f"{name} model needs {want}); is metrics.<name>.arch right?"
        )
