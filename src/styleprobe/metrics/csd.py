"""`style_csd`: Contrastive Style Descriptors (Somepalli et al. 2024, "Measuring Style Similarity in
Diffusion Models", learn2phoenix/CSD).

Definition, as in CSD's model.py: OpenAI CLIP ViT-L/14 vision tower with its projection removed
(the 1024-d CLS after `ln_post`), times the trained style head (a 1024x768 matrix), L2-normalised;
the score is the dot product of the output's and the reference's style vectors. Preprocessing is
CLIP's (resize 224 bicubic, center crop 224, CLIP mean/std). Reading: < 0.5 style absent, > 0.8
strongly present; WikiArt style retrieval mAP@1 64.6 (CLIP ViT-L 59.4, DINO ViT-B/8 46.9).

Weights: the original `checkpoint.pth` (`{"model_state_dict": {"module.backbone....", "module.last_layer_style",
"module.last_layer_content"}}`) or its Hub mirror `tomg-group-umd/CSD-ViT-L` (`pytorch_model.bin`, same format).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.metrics import preprocess
from styleprobe.metrics.base import ScoreBatch, Scorer, output_embeddings, reference_embeddings, register, shared_model

log = logging.getLogger("styleprobe")

HUB_REPO = "tomg-group-umd/CSD-ViT-L"
HUB_FILENAME = "pytorch_model.bin"


@dataclass(frozen=True)
class CSDArch:
    """The vision tower's shape. `vit_large` is CSD's published model; `tiny` the offline stand-in."""

    width: int
    layers: int
    head_width: int
    patch_size: int
    image_size: int
    style_dim: int


ARCHS = {
    "vit_large": CSDArch(width=1024, layers=24, head_width=64, patch_size=14, image_size=224, style_dim=768),
    "tiny": CSDArch(width=32, layers=2, head_width=16, patch_size=32, image_size=224, style_dim=24),
}


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


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """CSD's state dict from `checkpoint.pth` / `pytorch_model.bin`: `model_state_dict` taken, `module.` stripped.

    Fails with one line when the file is not a CSD checkpoint.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # The original checkpoint also pickles training state (numpy scalars); it is the published file.
            obj = torch.load(path, map_location="cpu", weights_only=False)
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
            f"{'tiny' if arch is ARCHS['tiny'] else 'vit_large'} model needs {want}); is metrics.<name>.arch right?"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def resolve_checkpoint(checkpoint: str | None, repo: str, filename: str, metric: str = "style_csd") -> Path:
    """A local checkpoint path, or the Hub mirror's file from the Hugging Face cache (downloaded if allowed)."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(
                f"CSD checkpoint {path} not found; download CSD's checkpoint.pth (or hf download {repo} {filename}) "
                f"and set metrics.{metric}.checkpoint to its path"
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as err:  # noqa: BLE001 - offline, missing, gated: one message with the fix
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"cannot load CSD weights {repo}/{filename}: {first}; run `hf download {repo} {filename}` on a machine "
            f"with network access, or set metrics.{metric}.checkpoint=/path/to/checkpoint.pth"
        ) from err


@register
class StyleCSD(Scorer):
    """Dot product of CSD style vectors (unit length) of output and style reference; 1 for the same image."""

    kind: ClassVar[str] = "style_csd"
    option_names: ClassVar[tuple[str, ...]] = ("arch", "checkpoint", "repo", "filename")

    def __init__(self, settings: Any):
        super().__init__(settings)
        o = settings.options
        self.arch_name = "tiny" if settings.weights == "tiny" else str(o.get("arch", "vit_large"))
        if self.arch_name not in ARCHS:
            raise ConfigError(f"metrics.{self.name}.arch={self.arch_name!r}; choose one of {', '.join(ARCHS)}")
        self.checkpoint = o.get("checkpoint")
        self.repo = str(o.get("repo", HUB_REPO))
        self.filename = str(o.get("filename", HUB_FILENAME))
        self.preprocess = preprocess.CLIP

    def family_name(self) -> str:
        return "CSD"

    def architecture(self) -> str:
        return f"CSD {self.arch_name}"

    def weights_name(self) -> str:
        return f"CSD {self.arch_name} ({self.checkpoint or f'{self.repo}/{self.filename}'})"

    def _model_key(self) -> tuple[Any, ...]:
        return ("csd", self.arch_name, self.checkpoint, self.repo, self.filename, self.settings.weights, str(self.settings.device))

    def model(self) -> CSDModel:
        def build() -> CSDModel:
            if self.settings.weights == "tiny":
                from styleprobe.metrics.tiny import ensure_tiny_scorers

                path = ensure_tiny_scorers() / "csd" / "checkpoint.pth"
            elif self.settings.weights == "random":
                return CSDModel(ARCHS[self.arch_name]).eval().to(self.settings.device)
            else:
                path = resolve_checkpoint(self.checkpoint, self.repo, self.filename, self.name)
            return load_csd(path, ARCHS[self.arch_name]).to(self.settings.device)

        return shared_model(self._model_key(), build)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model()(pixels.to(self.settings.device)).float().cpu()

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        out = output_embeddings(batch, self._model_key(), self.preprocess, self.embed_pixels)
        refs = reference_embeddings(batch, self._model_key(), self.preprocess, self.embed_pixels)
        return {self.name: (out.double() * refs.double()).sum(-1).numpy()}
