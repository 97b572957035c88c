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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.errors import ConfigError
from styleprobe.metrics import preprocess
from styleprobe.metrics.base import (
    ScoreBatch,
    Scorer,
    inference_mode,
    output_embeddings,
    reference_embeddings,
    register,
    shared_model,
)
from styleprobe.metrics.csd_arch import ARCHS, HUB_FILENAME, HUB_REPO
from styleprobe.metrics.weights_files import local_or_hub

if TYPE_CHECKING:  # csd_model (torch) is imported where the model is built, so configs are checked without torch
    import torch

    from styleprobe.metrics.csd_model import CSDModel

log = logging.getLogger("styleprobe")

def resolve_checkpoint(checkpoint: str | None, repo: str, filename: str, metric: str = "style_csd") -> Path:
    """A local checkpoint path, or the Hub mirror's file from the Hugging Face cache (downloaded if allowed)."""
    return local_or_hub(checkpoint, repo, filename, "CSD checkpoint", f"metrics.{metric}.checkpoint")


@register
class StyleCSD(Scorer):
    """Dot product of CSD style vectors (unit length) of output and style reference; 1 for the same image."""

    kind: ClassVar[str] = "style_csd"
    option_names: ClassVar[tuple[str, ...]] = ("arch", "checkpoint", "repo", "filename")

    def __init__(self, settings: Any):
        super().__init__(settings)
        o = settings.options
        self.arch_name = settings.weights if settings.weights in ("tiny", "toy") else str(o.get("arch", "vit_large"))
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

    def hub_files(self) -> list[Any]:
        """The checkpoint `resolve_checkpoint` will read: the local file, else the Hub mirror's."""
        from styleprobe.models.files import ModelFile

        what = f"the CSD checkpoint of {self.name}"
        if self.checkpoint:
            return [ModelFile(what, str(self.checkpoint), (), f"metrics.{self.name}.checkpoint")]
        return [ModelFile(what, self.repo, (self.filename,), f"metrics.{self.name}.checkpoint")]

    def _model_key(self) -> tuple[Any, ...]:
        return ("csd", self.arch_name, self.checkpoint, self.repo, self.filename, self.settings.weights, str(self.settings.device),
                str(self.settings.dtype))

    def model(self) -> CSDModel:
        def build() -> CSDModel:
            from styleprobe.metrics.csd_model import CSDModel, load_csd

            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            if self.settings.weights == "tiny":
                from styleprobe.metrics.tiny_scorers import ensure_tiny_scorers

                path = ensure_tiny_scorers() / "csd" / "checkpoint.pth"
            elif self.settings.weights == "toy":
                from styleprobe.models.toy.assemble import scorer_folder

                path = scorer_folder() / "csd" / "checkpoint.pth"
            elif self.settings.weights == "random":
                return CSDModel(ARCHS[self.arch_name]).eval().to(device, dtype)
            else:
                path = resolve_checkpoint(self.checkpoint, self.repo, self.filename, self.name)
            return load_csd(path, ARCHS[self.arch_name]).to(device, dtype)

        return shared_model(self._model_key(), build)

    @inference_mode
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model()(pixels.to(self.settings.torch_device, self.settings.torch_dtype)).float().cpu()

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        out = output_embeddings(batch, self._model_key(), self.preprocess, self.embed_pixels)
        refs = reference_embeddings(batch, self._model_key(), self.preprocess, self.embed_pixels)
        return {self.name: (out.double() * refs.double()).sum(-1).numpy()}
