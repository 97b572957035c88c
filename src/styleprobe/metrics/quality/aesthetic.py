"""`quality_aesthetic`: the LAION improved aesthetic predictor (Schuhmann 2022; LAION-Aesthetics V2), image only.

Reference: christophschuhmann/improved-aesthetic-predictor 6934dd8, simple_inference.py: OpenAI CLIP ViT-L/14's
`encode_image` of the CLIP-preprocessed image (= open_clip `ViT-L-14`/`openai` with QuickGELU, styleprobe's
style_clip model, whose output embeddings a batch computes once for both), L2-normalised (`normalized`), through the
MLP head (`quality/heads.py`) of `sac+logos+ava1-l14-linearMSE.pth`; the score is the head's output, a rating on
AVA's 1-10 scale (LAION-Aesthetics keeps images above 5 to 6.5).

Weights: the head's file (a bare state dict, read weights-only), kept in the predictor's GitHub repository, so
styleprobe looks for it at `metrics.<name>.checkpoint` (default: $STYLEPROBE_CACHE/aesthetic/<file>) and names the
download when it is missing; CLIP ViT-L/14 as style_clip finds it. Apache-2.0 (the repository's LICENSE).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.metrics.base import ScoreBatch, ScorerSettings, inference_mode, register, shared_model
from styleprobe.metrics.clip import _CLIPScorer, open_clip_files
from styleprobe.metrics.quality.base import QualityScorer

if TYPE_CHECKING:
    import torch

    from styleprobe.metrics.quality.heads import RewardMLP

FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
FIX = f"download it again from {URL}"


def default_checkpoint() -> Path:
    from styleprobe.disk import default_cache_dir

    return default_cache_dir() / "aesthetic" / FILENAME


def load_head(path: Path) -> RewardMLP:
    """The aesthetic MLP head from its file; its input width is read from the file (768 for CLIP ViT-L/14)."""
    from styleprobe.metrics.quality.heads import RewardMLP, head_input_size
    from styleprobe.metrics.safe_load import read_weights, tensor_dict

    state = tensor_dict(read_weights(path, "aesthetic head", FIX), "aesthetic head", path, FIX)
    width = head_input_size(state)
    head = RewardMLP(width or 768)
    expected = head.state_dict()
    if width is None or set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise ConfigError(f"aesthetic head {path} is not the predictor's MLP (expected {', '.join(sorted(expected)[:3])}, "
                          f"... with the 1024-128-64-16-1 widths); {FIX}")
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()


@register
class AestheticScorer(QualityScorer, _CLIPScorer):
    """The aesthetic head on each output's L2-normalised CLIP ViT-L/14 image embedding."""

    kind: ClassVar[str] = "quality_aesthetic"
    option_names: ClassVar[tuple[str, ...]] = ("model", "pretrained", "checkpoint")
    reference: ClassVar[str] = "christophschuhmann/improved-aesthetic-predictor 6934dd8 simple_inference.py"

    def __init__(self, settings: ScorerSettings):
        super().__init__(settings)
        checkpoint = settings.options.get("checkpoint")
        self.checkpoint = Path(str(checkpoint)).expanduser() if checkpoint else None

    def family_name(self) -> str:
        return "LAION aesthetic predictor"

    def architecture(self) -> str:
        return f"LAION aesthetic MLP on open_clip {self.model_name}"

    def weights_name(self) -> str:
        return f"LAION aesthetic predictor v2 ({self.checkpoint or FILENAME}) on open_clip {self.model_name}/{self.pretrained}"

    def clip_weights(self) -> str:
        return "tiny" if self.stand_in else self.settings.weights

    def hub_files(self) -> list[Any]:
        from styleprobe.models.files import ModelFile

        path = self.checkpoint or default_checkpoint()
        head = ModelFile(f"the aesthetic head of {self.name} (download {URL} to {path})", str(path), (),
                         f"metrics.{self.name}.checkpoint")
        return [head, *open_clip_files(self.model_name, self.pretrained, self.name)]

    def head(self) -> RewardMLP:
        def build() -> RewardMLP:
            from styleprobe.metrics.quality.heads import RewardMLP

            device, dtype = self.settings.torch_device, self.settings.torch_dtype
            if self.stand_in:
                from styleprobe.metrics.quality.stand_ins import AESTHETIC_FILE, ensure_tiny_quality

                return load_head(ensure_tiny_quality() / "aesthetic" / AESTHETIC_FILE).to(device, dtype)
            if self.settings.weights == "random":
                return RewardMLP(768).eval().to(device, dtype)
            path = self.checkpoint or default_checkpoint()
            if not path.is_file():
                raise ModelUnavailableError(f"{self.name}: the aesthetic head {path} is missing; download {URL} to it "
                                            f"(or set metrics.{self.name}.checkpoint to the file)")
            return load_head(path).to(device, dtype)

        return shared_model(("aesthetic_head", str(self.checkpoint), self.clip_weights(), self.settings.device,
                             self.settings.dtype), build)

    @inference_mode
    def rate(self, embeddings: torch.Tensor) -> np.ndarray:
        import torch

        head = self.head()
        unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # simple_inference.py `normalized` (L2)
        weight = head.layers[0].weight
        return head(unit.to(weight.device, weight.dtype)).double().cpu().numpy()

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        return {self.name: self.rate(self.images(batch))}
