"""`quality_pickscore`: PickScore v1 (Kirstain et al. 2023), a CLIP-H fine-tuned on Pick-a-Pic's human preferences.

Reference: yuvalkirstain/PickScore f79607f, README.md "Inference with PickScore": the processor of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K (CLIP's resize of the shorter side to 224, bicubic, center crop 224, CLIP
mean/std; the prompt padded and cut at 77 tokens), `AutoModel` yuvalkirstain/PickScore_v1's `get_image_features` and
`get_text_features`, each L2-normalised; score = logit_scale.exp() x cos(text, image) (about 20 to 23 for good
images; logit_scale.exp() is 100 in the published model). Softmax over a prompt's images gives the README's
probabilities; styleprobe keeps the score, one per (image, prompt).

Images are preprocessed by styleprobe's `Preprocess` built from the processor's own settings (so a batch shares one
preprocessing with the other CLIP-preprocessed metrics, and runs on the device on a GPU). It equals the processor's
PIL backend, which the README's transformers 4 ran, bit for bit (tested); transformers 5 loads a torchvision backend
by default, whose resize differs by up to 0.03 in normalised pixels. Code MIT (the repository's LICENSE); the model card states no license.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.errors import ConfigError
from styleprobe.metrics.base import (
    ScoreBatch,
    ScorerSettings,
    inference_mode,
    register,
    shared_model,
)
from styleprobe.metrics.preprocess import Preprocess
from styleprobe.metrics.quality.base import QualityScorer, image_and_prompt_cosines

if TYPE_CHECKING:
    import torch

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
#: CLIP ViT-H/14's sizes (laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config.json), for the random-weight timing model.
CLIP_H = {
    "text_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                    "hidden_act": "gelu"},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                      "patch_size": 14, "image_size": 224, "hidden_act": "gelu"},
    "projection_dim": 1024,
}


class _Loaded:
    def __init__(self, model: Any, processor: Any, device: Any, dtype: Any):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.preprocess = processor_preprocess(processor)

    @inference_mode
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))).float().cpu()

    @inference_mode
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return _features(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})).float().cpu()


def _features(out: Any) -> torch.Tensor:
    """transformers 4 returns the projected features, transformers 5 an output whose pooler_output holds them."""
    return out if hasattr(out, "shape") else out.pooler_output


def processor_preprocess(processor: Any) -> Preprocess:
    """styleprobe's `Preprocess` with a CLIP image processor's settings (shortest-edge resize, center crop, mean/std)."""
    image = processor.image_processor
    size, crop = dict(image.size or {}), dict(image.crop_size or {})
    shortest = size.get("shortest_edge")
    if not shortest or not getattr(image, "do_center_crop", True) or crop.get("height") != crop.get("width"):
        raise ConfigError(f"PickScore's processor resizes by {size} and crops to {crop}; styleprobe implements CLIP's "
                          "(shortest edge, square center crop): give the laion CLIP-H processor")
    resample = {3: "bicubic", 2: "bilinear"}.get(int(getattr(image, "resample", 3)), "bicubic")
    return Preprocess(int(shortest), int(crop["height"]), tuple(image.image_mean), tuple(image.image_std), resample)


@register
class PickScoreScorer(QualityScorer):
    """PickScore v1 of each (output, prompt) pair: logit_scale.exp() x cos(text, image)."""

    kind: ClassVar[str] = "quality_pickscore"
    option_names: ClassVar[tuple[str, ...]] = ("model", "processor")
    needs_prompt: ClassVar[bool] = True
    reference: ClassVar[str] = "yuvalkirstain/PickScore f79607f README.md (Inference with PickScore)"

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        self.model_source = str(settings.options.get("model", MODEL))
        self.processor_source = str(settings.options.get("processor", PROCESSOR))

    def family_name(self) -> str:
        return "PickScore"

    def architecture(self) -> str:
        return "PickScore (CLIP ViT-H/14)"

    def weights_name(self) -> str:
        return f"PickScore v1 ({self.model_source})"

    def hub_files(self) -> list[Any]:
        from styleprobe.models.files import ModelFile, model_folder

        return [*model_folder(f"the PickScore model of {self.name}", self.model_source, f"metrics.{self.name}.model"),
                ModelFile(f"the PickScore processor of {self.name}", self.processor_source, ("preprocessor_config.json",),
                          f"metrics.{self.name}.processor")]

    def _model_key(self) -> tuple[Any, ...]:
        return ("pickscore", self.model_source, self.processor_source, "tiny" if self.stand_in else self.settings.weights,
                self.settings.device, self.settings.dtype)

    def loaded(self) -> _Loaded:
        def build() -> _Loaded:
            from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel

            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            model_source, processor_source = self.model_source, self.processor_source
            if self.stand_in or self.settings.weights == "random":
                from styleprobe.metrics.quality.stand_ins import ensure_tiny_quality

                folder = ensure_tiny_quality() / "pickscore"
                model_source, processor_source = str(folder / "model"), str(folder / "processor")
            try:
                processor = AutoProcessor.from_pretrained(processor_source)
                if self.settings.weights == "random":
                    model = CLIPModel(CLIPConfig(**CLIP_H))
                else:
                    model = AutoModel.from_pretrained(model_source)
            except OSError as err:
                from styleprobe.models.sources import unavailable

                raise unavailable(f"PickScore ({model_source}, {processor_source})", err=err, limit=160,
                                  fix=f"run `hf download {model_source}` and `hf download {processor_source}` on a "
                                      "machine with network access, or set the metric's model and processor to folders") from err
            return _Loaded(model.to(device, dtype).eval(), processor, device, dtype)

        return shared_model(self._model_key(), build)

    @property
    def preprocess(self) -> Preprocess:
        return self.loaded().preprocess

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        loaded = self.loaded()
        scale = float(loaded.model.logit_scale.detach().float().exp().cpu())
        return {self.name: scale * image_and_prompt_cosines(batch, self._model_key(), loaded)}
