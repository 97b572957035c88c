"""DINO-based metrics: cosine of self-supervised ViT CLS embeddings of output and style reference.

- `style_dino`: DINO v1 ViT-B/8 (`facebook/dino-vitb8`; Caron et al. 2021), the style-consistency score
  of StyleAligned (Hertz et al. 2024) and B-LoRA (Frenkel et al. 2024).
- `ref_dinov2`: DINOv2 ViT-B/14 (`facebook/dinov2-base`; Oquab et al. 2023) similarity of output and reference.
  DINOv2 features are semantic: CSGO (CAS) and CLeaR read it as content leakage, others as style. It mixes both,
  so styleprobe reports it under one role, similarity to the reference (`role: reference`, no better direction),
  never as style and leakage at once. Folders scored before the rename hold it as `leak_dino` (or `style_dinov2`);
  analysis reads those columns as `ref_dinov2`.

Embedding: the CLS token of the last hidden state, after the model's final LayerNorm (DINO's
`x_norm_clstoken`); no pooler head. Preprocessing: resize the shorter side to 256 (bicubic), center-crop
224, ImageNet mean/std (DINO's eval_knn.py; DINOv2's image processor does the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.metrics import preprocess
from styleprobe.metrics.base import (
    ScoreBatch,
    Scorer,
    ScorerSettings,
    cosine,
    inference_mode,
    output_embeddings,
    reference_embeddings,
    register,
    shared_model,
)

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "facebook/dino-vitb8"


class HFViT:
    """A Hugging Face ViT / DINOv2 backbone returning normalised-CLS embeddings."""

    def __init__(self, model: Any, device: torch.device):
        import torch

        self.model = model
        self.device = device
        self.preprocess = preprocess.DINO
        self.dtype = torch.float32

    def to(self, dtype: torch.dtype) -> HFViT:
        self.model.to(dtype)
        self.dtype = dtype
        return self

    @classmethod
    def load(cls, source: str, device: torch.device) -> HFViT:
        from transformers import AutoConfig, AutoModel

        try:
            config = AutoConfig.from_pretrained(source)
            extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}  # DINO has no pooler head
            model = AutoModel.from_pretrained(source, config=config, **extra)
        except OSError as err:
            from styleprobe.models.sources import unavailable

            raise unavailable(source, err=err, limit=160, fix=f"run `hf download {source}` on a machine with network "
                                                              "access, or set the metric's model to a local folder") from err
        return cls(model.to(device).eval(), device)

    @classmethod
    def random(cls, family: str, device: torch.device) -> HFViT:
        """ViT-B/8 (DINO) or ViT-B/14 (DINOv2) with random weights, built offline (for timing only)."""
        from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

        if family == "dinov2":
            model = Dinov2Model(Dinov2Config())
        else:
            model = ViTModel(ViTConfig(patch_size=8), add_pooling_layer=False)
        return cls(model.to(device).eval(), device)

    @inference_mode
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state[:, 0].float().cpu()


def _family(source: str) -> str:
    """dino or dinov2: from a local folder's config.json, else from the Hub id (decides the tiny / random stand-in)."""
    config = Path(source).expanduser() / "config.json"
    if config.is_file():
        return "dinov2" if json.loads(config.read_text()).get("model_type") == "dinov2" else "dino"
    return "dinov2" if "dinov2" in source.lower() else "dino"


@register
class StyleDINO(Scorer):
    """Cosine of DINO / DINOv2 CLS embeddings of output and reference (model chosen by `model`)."""

    kind: ClassVar[str] = "style_dino"
    option_names: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        self.source = str(settings.options.get("model", DEFAULT_MODEL))
        self.family = _family(self.source)

    def family_name(self) -> str:
        if self.settings.weights == "toy":  # one DINO-format content model stands in for both families in the toy world
            return "DINO-format content ViT"
        return f"{'DINOv2' if self.family == 'dinov2' else 'DINO'} ViT"

    def architecture(self) -> str:
        return "DINOv2 ViT-B/14" if self.family == "dinov2" else "DINO ViT-B/8"

    def weights_name(self) -> str:
        return self.source

    def hub_files(self) -> list[Any]:
        from styleprobe.models.files import model_folder

        return model_folder(f"the {self.source} model of {self.name}", self.source, f"metrics.{self.name}.model")

    def _model_key(self) -> tuple[Any, ...]:
        return ("hf_vit", self.source, self.settings.weights, str(self.settings.device), str(self.settings.dtype))

    def backbone(self) -> HFViT:
        def build() -> HFViT:
            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            if self.settings.weights == "tiny":
                from styleprobe.metrics.tiny_scorers import ensure_tiny_scorers

                return HFViT.load(str(ensure_tiny_scorers() / self.family), device).to(dtype)
            if self.settings.weights == "toy":
                from styleprobe.models.toy.assemble import scorer_folder

                return HFViT.load(str(scorer_folder() / "dino"), device).to(dtype)
            if self.settings.weights == "random":
                return HFViT.random(self.family, device).to(dtype)
            return HFViT.load(self.source, device).to(dtype)

        return shared_model(self._model_key(), build)

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        vit, key = self.backbone(), self._model_key()
        out = output_embeddings(batch, key, vit.preprocess, vit.encode_pixels)
        return {self.name: cosine(out, reference_embeddings(batch, key, vit.preprocess, vit.encode_pixels))}
