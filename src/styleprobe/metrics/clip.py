"""CLIP-based metrics (Radford et al. 2021), through open_clip; the model is named in every row.

- `style_clip` (CLIP-I): cosine between the CLIP image embeddings of output and style reference.
- `text_clip` (CLIP-T, Hessel et al. 2021 without the 2.5x rescale): cosine between the output's image
  embedding and its target prompt's text embedding. Raw cosine; x100 is cosmetic.
- `leak_clip`: cosine between the output and a text naming the *reference's* content ("a rabbit");
  `leak_margin` = that minus the cosine to a text naming the target subject ("a cat");
  `leak_free` = 1 when the target subject wins (margin < 0), 0 when the reference content wins, and empty
  when the two texts are the same (no leakage can be told apart). The leak-free rate is MaskST's (ICLR'25).

Embeddings are open_clip's `encode_image` / `encode_text` outputs (after the projection), L2-normalised.
Preprocessing: the model's own (for CLIP tags: resize shorter side to 224 bicubic, center crop 224,
CLIP mean/std). Default model: ('ViT-L-14', 'openai') = openai/clip-vit-large-patch14.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.metrics.base import (
    ScoreBatch,
    Scorer,
    ScorerSettings,
    cached_rows,
    cosine,
    embedding_cache,
    inference_mode,
    output_embeddings,
    reference_embeddings,
    register,
    shared_model,
)
from styleprobe.metrics.preprocess import Preprocess

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"


class OpenCLIP:
    """One open_clip model with its tokenizer and preprocessing, loaded once per process."""

    def __init__(self, model: Any, tokenizer: Any, preprocess: Preprocess, device: torch.device):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.dtype = torch.float32

    def to(self, dtype: torch.dtype) -> OpenCLIP:
        self.model.to(dtype)
        self.dtype = dtype
        return self

    @classmethod
    def load(cls, name: str, pretrained: str | None, device: torch.device) -> OpenCLIP:
        """`pretrained=None` builds the architecture with random weights (for timing only)."""
        import open_clip

        if name not in open_clip.list_models():
            raise ConfigError(f"open_clip has no model {name!r}; e.g. ViT-L-14, ViT-H-14 (open_clip.list_models())")
        try:
            model = open_clip.create_model(name, pretrained=pretrained, device=device, **open_clip_options(name, pretrained))
        except RuntimeError as err:
            raise _unavailable(name, pretrained, err) from err
        model.eval()
        cfg = model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        if cfg.get("resize_mode", "shortest") != "shortest":
            raise ConfigError(f"open_clip {name}/{pretrained} resizes with {cfg['resize_mode']!r}; styleprobe implements 'shortest'")
        pre = Preprocess(size, size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))
        return cls(model, open_clip.get_tokenizer(name), pre, device)

    @inference_mode
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self.device, self.dtype)).float().cpu()

    @inference_mode
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu()


def open_clip_options(name: str, pretrained: str | None) -> dict[str, Any]:
    """OpenAI's weights were trained with QuickGELU; open_clip's plain `ViT-L-14` config builds GELU and only warns.

    Building the activation the tag was trained with is what makes `ViT-L-14`/`openai` OpenAI's CLIP ViT-L/14.
    """
    from open_clip.pretrained import get_pretrained_cfg

    if not pretrained:
        return {}
    return {"force_quick_gelu": True} if (get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu") else {}


def _unavailable(name: str, pretrained: str, err: Exception) -> ModelUnavailableError:
    from open_clip.pretrained import get_pretrained_cfg

    from styleprobe.models.sources import unavailable

    hub = (get_pretrained_cfg(name, pretrained) or {}).get("hf_hub", "").rstrip("/")
    if Path(pretrained or "").suffix:
        fix = f"the file {pretrained} is missing or unreadable"
    elif hub:
        fix = f"run `hf download {hub} open_clip_pytorch_model.bin` on a machine with network access"
    else:
        fix = "download its weights and set the metric's pretrained to the file's path"
    why = "not in the Hugging Face cache and cannot be downloaded" if "download" in str(err).lower() else str(err)
    return unavailable(f"open_clip {name}/{pretrained}", err=why, fix=fix, limit=160)


#: Where open_clip's Hub tags keep their weights (`pretrained.py`'s `hf_hub`), for the tags styleprobe's metrics use:
#: looking them up in open_clip would import torch at planning. Other tags ask open_clip.
OPEN_CLIP_HUB = {
    ("ViT-L-14", "openai"): "timm/vit_large_patch14_clip_224.openai/",
    ("ViT-H-14", "laion2b_s32b_b79k"): "laion/CLIP-ViT-H-14-laion2B-s32B-b79K/",
}
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip tries them in this order


def open_clip_files(name: str, pretrained: str, metric: str) -> list[Any]:
    """The file open_clip reads for `name`/`pretrained`: a local checkpoint, or its Hub repository's weights."""
    from styleprobe.models.files import ModelFile

    what, setting = f"the open_clip weights {name}/{pretrained} of {metric}", f"metrics.{metric}.pretrained"
    if Path(pretrained).suffix:
        return [ModelFile(what, pretrained, (), setting)]
    hub = OPEN_CLIP_HUB.get((name, pretrained))
    if hub is None:
        from open_clip.pretrained import get_pretrained_cfg

        hub = (get_pretrained_cfg(name, pretrained) or {}).get("hf_hub", "")
    if not hub:  # an unknown tag (open_clip refuses it when loading) or one downloaded from a URL, outside the Hub's cache
        return []
    repo, filename = os.path.split(hub)  # "org/name/" or "org/name/file.bin", as open_clip splits it
    if not filename:
        names = OPEN_CLIP_WEIGHTS
    elif filename.endswith((".bin", ".pth")):
        names = (f"{filename[:-4]}.safetensors", filename)
    else:
        names = (filename,)
    return [ModelFile(what, repo, names, setting)]


class _CLIPScorer(Scorer):
    option_names: ClassVar[tuple[str, ...]] = ("model", "pretrained")

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        self.model_name = str(settings.options.get("model", DEFAULT_MODEL))
        self.pretrained = str(settings.options.get("pretrained", DEFAULT_PRETRAINED))

    def family_name(self) -> str:
        return "open_clip"

    def architecture(self) -> str:
        return f"open_clip {self.model_name}"

    def weights_name(self) -> str:
        return f"open_clip {self.model_name}/{self.pretrained}"

    def hub_files(self) -> list[Any]:
        return open_clip_files(self.model_name, self.pretrained, self.name)

    def clip_weights(self) -> str:
        """Which weights the CLIP model uses: the scoring stage's (a metric that has no toy-world model maps toy to tiny)."""
        return self.settings.weights

    def _model_key(self) -> tuple[Any, ...]:
        return ("open_clip", self.model_name, self.pretrained, self.clip_weights(), str(self.settings.device),
                str(self.settings.dtype))

    def clip(self) -> OpenCLIP:
        def build() -> OpenCLIP:
            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            weights = self.clip_weights()
            if weights == "tiny":
                from styleprobe.metrics.tiny_scorers import tiny_open_clip

                return OpenCLIP.load(*tiny_open_clip(), device).to(dtype)
            if weights == "toy":
                from styleprobe.models.toy.assemble import toy_open_clip

                return OpenCLIP.load(*toy_open_clip(), device).to(dtype)
            pretrained = None if weights == "random" else self.pretrained
            return OpenCLIP.load(self.model_name, pretrained, device).to(dtype)

        return shared_model(self._model_key(), build)

    def images(self, batch: ScoreBatch) -> torch.Tensor:
        """The outputs' image embeddings, computed once per batch for all CLIP metrics on this model."""
        clip = self.clip()
        return output_embeddings(batch, self._model_key(), clip.preprocess, clip.encode_pixels)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings, each distinct text encoded once per process."""
        clip = self.clip()
        return cached_rows(
            embedding_cache(self._model_key(), "text"), texts, lambda idx: clip.encode_texts([texts[i] for i in idx])
        )


@register
class StyleCLIP(_CLIPScorer):
    """CLIP-I: cosine of CLIP image embeddings of output and style reference."""

    kind: ClassVar[str] = "style_clip"

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        clip = self.clip()
        refs = reference_embeddings(batch, self._model_key(), clip.preprocess, clip.encode_pixels)
        return {self.name: cosine(self.images(batch), refs)}


@register
class TextCLIP(_CLIPScorer):
    """CLIP-T: cosine of the output's image embedding and its target prompt's text embedding."""

    kind: ClassVar[str] = "text_clip"

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        return {self.name: cosine(self.images(batch), self.texts(batch.prompts))}


@register
class LeakCLIP(_CLIPScorer):
    """Content leakage as text: does the output look more like the reference's content than the target subject?"""

    kind: ClassVar[str] = "leak_clip"
    option_names: ClassVar[tuple[str, ...]] = ("model", "pretrained", "template", "margin_column", "free_column")
    needs_content: ClassVar[bool] = True

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        o = settings.options
        self.template = str(o.get("template", "a {}"))
        if "{}" not in self.template:
            raise ConfigError(f"metrics.{self.name}.template={self.template!r} has no {{}} for the content; e.g. 'a {{}}'")
        self.margin_column = str(o.get("margin_column", "leak_margin"))
        self.free_column = str(o.get("free_column", "leak_free"))

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.name, self.margin_column, self.free_column)

    def phrase(self, label: str) -> str:
        label = label.strip()
        return label if label.lower().startswith(("a ", "an ", "the ")) else self.template.format(label)

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        out = self.images(batch)
        content_texts = [self.phrase(c) for c in batch.contents]
        subject_texts = [self.phrase(s) for s in batch.subjects]
        leak = cosine(out, self.texts(content_texts))
        target = cosine(out, self.texts(subject_texts))
        margin = leak - target
        same = np.array([c.lower() == s.lower() for c, s in zip(content_texts, subject_texts, strict=True)])
        unlabelled = np.array([not c.strip() for c in batch.contents])  # no content label: leakage undefined
        free = np.where(same | unlabelled, np.nan, (margin < 0).astype(float))
        margin = np.where(same | unlabelled, np.nan, margin)
        return {self.name: np.where(unlabelled, np.nan, leak), self.margin_column: margin, self.free_column: free}
