"""`quality_imagereward`: ImageReward v1.0 (Xu et al. 2023), human preference of an image for its prompt.

Reference: THUDM/ImageReward c1392c6, ImageReward/ImageReward.py `ImageReward.score` and ImageReward/utils.py `load`:
the prompt tokenized by BLIP's tokenizer (bert-base-uncased plus BLIP's [DEC] and [ENC] tokens, padded to and cut at
35 tokens), the image resized (shorter side 224, bicubic), center-cropped to 224 and CLIP-normalised, BLIP's ViT-L
tokens cross-attended by the text encoder, the [CLS] state through the MLP head, standardised:
(head - 0.16717362830052426) / 1.0333394966054072. Typical values lie around -2 to 2; style-rank's table reads it.
The network is built in `quality/blip.py` (why not the `image-reward` package: there).

Weights: THUDM/ImageReward's `ImageReward.pt` (a bare state dict, read weights-only) and `med_config.json`; the
tokenizer from the Hub's bert-base-uncased (what BLIP's `init_tokenizer` loads). Apache-2.0 (the repository's LICENSE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.errors import ConfigError
from styleprobe.metrics import preprocess
from styleprobe.metrics.base import ScoreBatch, ScorerSettings, inference_mode, register, shared_model
from styleprobe.metrics.quality.base import QualityScorer, prompts_of

if TYPE_CHECKING:

    from styleprobe.metrics.quality.blip import ImageRewardModel

REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER = "bert-base-uncased"


class _Loaded:
    """The model with its tokenizer (BLIP's: bert-base-uncased + [DEC] and [ENC])."""

    def __init__(self, model: ImageRewardModel, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer


@register
class ImageRewardScorer(QualityScorer):
    """ImageReward v1.0 of each (output, prompt) pair."""

    kind: ClassVar[str] = "quality_imagereward"
    option_names: ClassVar[tuple[str, ...]] = ("repo", "checkpoint", "med_config", "tokenizer", "arch")
    needs_prompt: ClassVar[bool] = True
    reference: ClassVar[str] = "THUDM/ImageReward c1392c6 ImageReward/ImageReward.py ImageReward.score"

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        from styleprobe.metrics.quality.arch import VIT_ARCHS

        o = settings.options
        self.repo = str(o.get("repo", REPO))
        self.checkpoint = o.get("checkpoint")
        self.med_config = o.get("med_config")
        self.tokenizer_source = str(o.get("tokenizer", TOKENIZER))
        self.arch_name = "tiny" if self.stand_in else str(o.get("arch", "vit_large"))
        if self.arch_name not in VIT_ARCHS:
            raise ConfigError(f"metrics.{self.name}.arch={self.arch_name!r}; choose one of {', '.join(VIT_ARCHS)}")
        self.preprocess = preprocess.CLIP  # ImageReward.py `_transform(224)`: CLIP's resize, crop and normalisation

    def family_name(self) -> str:
        return "ImageReward"

    def architecture(self) -> str:
        return "ImageReward (BLIP ViT-L/16 + BERT-base)"

    def weights_name(self) -> str:
        return f"ImageReward v1.0 ({self.checkpoint or f'{self.repo}/{CHECKPOINT}'})"

    def hub_files(self) -> list[Any]:
        from styleprobe.models.files import ModelFile

        return [self.file_needed(self.checkpoint, self.repo, CHECKPOINT, "the ImageReward checkpoint"),
                self.file_needed(self.med_config, self.repo, MED_CONFIG, "ImageReward's med_config.json", "med_config"),
                ModelFile(f"the {self.tokenizer_source} tokenizer of {self.name}", self.tokenizer_source, ("vocab.txt",),
                          f"metrics.{self.name}.tokenizer")]

    def _model_key(self) -> tuple[Any, ...]:
        return ("imagereward", self.repo, self.checkpoint, self.med_config, self.tokenizer_source, self.arch_name,
                self.settings.weights if not self.stand_in else "tiny", self.settings.device, self.settings.dtype)

    def loaded(self) -> _Loaded:
        def build() -> _Loaded:
            from transformers import BertTokenizer

            from styleprobe.metrics.quality.arch import VIT_ARCHS
            from styleprobe.metrics.quality.blip import BERT_BASE, ImageRewardModel, load_imagereward

            arch = VIT_ARCHS[self.arch_name]
            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            if self.stand_in or self.settings.weights == "random":
                from styleprobe.metrics.quality.stand_ins import ensure_tiny_quality

                folder = ensure_tiny_quality() / "imagereward"
                tokenizer_source = str(folder / "bert-base-uncased")
                if self.stand_in:
                    model = load_imagereward(folder / CHECKPOINT, folder / MED_CONFIG, arch)
                else:  # the full-size network with random weights, for timing (the tiny vocabulary's ids fit it)
                    model = ImageRewardModel(arch, BERT_BASE).eval()
            else:
                path = self.local_or_hub(self.checkpoint, self.repo, CHECKPOINT)
                config = self.local_or_hub(self.med_config, self.repo, MED_CONFIG, "med_config")
                model = load_imagereward(path, config, arch)
                tokenizer_source = self.tokenizer_source
            tokenizer = _blip_tokenizer(BertTokenizer, tokenizer_source)
            return _Loaded(model.to(device, dtype), tokenizer)

        return shared_model(self._model_key(), build)

    @inference_mode
    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        from styleprobe.metrics.quality.blip import MAX_TOKENS

        loaded = self.loaded()
        device, dtype = self.settings.torch_device, self.settings.torch_dtype
        text = loaded.tokenizer(prompts_of(batch), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt")
        pixels = batch.pixels(self.preprocess).to(device, dtype)
        scores = loaded.model(pixels, text.input_ids.to(device), text.attention_mask.to(device))
        return {self.name: scores.double().cpu().numpy()}


def _blip_tokenizer(cls: Any, source: str) -> Any:
    """BLIP's `init_tokenizer`: bert-base-uncased with [DEC] as bos and [ENC] as an extra special token (the ids of
    ordinary words are bert-base-uncased's; the text encoder's vocabulary has the two extra rows)."""
    try:
        tokenizer = cls.from_pretrained(source)
    except OSError as err:
        from styleprobe.models.sources import unavailable

        raise unavailable(f"the {source} tokenizer", err=err, limit=160,
                          fix=f"run `hf download {source}` on a machine with network access, or set the metric's "
                              "tokenizer to a local folder") from err
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer
