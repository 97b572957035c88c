"""`quality_hps`: HPS v2.1 (Wu et al. 2023, Human Preference Score v2), a CLIP ViT-H/14 fine-tuned on HPD v2.

Reference: tgxs002/HPSv2 866735e, hpsv2/img_score.py `score`: open_clip `ViT-H-14` (GELU), its weights replaced by
`load_state_dict(checkpoint['state_dict'])` of xswu/HPSv2's `HPS_v2.1_compressed.pt` (so the laion2B weights it starts
from are not needed: every weight comes from the checkpoint, loaded strictly), `preprocess_val` =
`preprocess.ResizeLongest` (tensor resize of the longer side to 224, zero padding, CLIP mean/std), the prompt through
open_clip's tokenizer; score = cos(image features, text features), the diagonal of `image_features @ text_features.T`
of the normalised features (about 0.2 to 0.35; papers often print it x100). The original runs under CUDA autocast;
styleprobe scores in `scoring.dtype` (float32 by default).

Weights: the checkpoint, read weights-only. Apache-2.0 (the repository's LICENSE and the model card).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.errors import ConfigError
from styleprobe.metrics import preprocess
from styleprobe.metrics.base import (
    ScoreBatch,
    ScorerSettings,
    register,
    shared_model,
)
from styleprobe.metrics.quality.base import QualityScorer, image_and_prompt_cosines
from styleprobe.metrics.safe_load import read_weights, tensor_dict

if TYPE_CHECKING:
    from styleprobe.metrics.clip import OpenCLIP

REPO = "xswu/HPSv2"
FILENAME = "HPS_v2.1_compressed.pt"
FIX = f"download {REPO}/{FILENAME} again (hf download {REPO} {FILENAME})"


def load_hps(model_name: str, path: Path | None, device: Any) -> OpenCLIP:
    """open_clip `model_name` with the HPS checkpoint's `state_dict` loaded strictly (None: random weights)."""
    import logging

    import open_clip

    from styleprobe.metrics.clip import OpenCLIP

    logging.disable(logging.WARNING)  # open_clip warns that a model built without weights is random: they come next
    try:
        model = open_clip.create_model(model_name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    if path is not None:
        state = tensor_dict(read_weights(path, "HPS checkpoint", FIX), "HPS checkpoint", path, FIX, "state_dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or extra or wrong:
            named = missing or extra or wrong
            what = "lacks" if missing else ("has extra" if extra else "has wrongly shaped")
            raise ConfigError(f"HPS checkpoint {path} {what} weights of open_clip {model_name} (e.g. {', '.join(named[:3])}); "
                              f"is metrics.<name>.model its architecture? else {FIX}")
        model.load_state_dict({k: v.float() for k, v in state.items()})
    return OpenCLIP(model.to(device).eval(), open_clip.get_tokenizer(model_name), preprocess.HPS, device)


@register
class HPSScorer(QualityScorer):
    """HPS v2.1 of each (output, prompt) pair: cosine of HPS's image and text features."""

    kind: ClassVar[str] = "quality_hps"
    option_names: ClassVar[tuple[str, ...]] = ("model", "repo", "filename", "checkpoint")
    needs_prompt: ClassVar[bool] = True
    reference: ClassVar[str] = "tgxs002/HPSv2 866735e hpsv2/img_score.py score"

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        o = settings.options
        self.model_name = str(o.get("model", "ViT-H-14"))
        self.repo = str(o.get("repo", REPO))
        self.filename = str(o.get("filename", FILENAME))
        self.checkpoint = o.get("checkpoint")
        self.preprocess = preprocess.HPS

    def family_name(self) -> str:
        return "HPS"

    def architecture(self) -> str:
        return f"HPS (open_clip {self.model_name})"

    def weights_name(self) -> str:
        return f"HPS v2.1 ({self.checkpoint or f'{self.repo}/{self.filename}'})"

    def hub_files(self) -> list[Any]:
        return [self.file_needed(self.checkpoint, self.repo, self.filename, "the HPS checkpoint")]

    def _model_key(self) -> tuple[Any, ...]:
        return ("hps", self.model_name, self.repo, self.filename, self.checkpoint,
                "tiny" if self.stand_in else self.settings.weights, self.settings.device, self.settings.dtype)

    def clip(self) -> OpenCLIP:
        def build() -> OpenCLIP:
            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            if self.stand_in:
                from styleprobe.metrics.quality.stand_ins import tiny_hps_model

                name, path = tiny_hps_model()
                return load_hps(name, path, device).to(dtype)
            if self.settings.weights == "random":
                return load_hps(self.model_name, None, device).to(dtype)
            return load_hps(self.model_name, self.local_or_hub(self.checkpoint, self.repo, self.filename), device).to(dtype)

        return shared_model(self._model_key(), build)

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        return {self.name: image_and_prompt_cosines(batch, self._model_key(), self.clip())}
