"""What the quality scorers share: their role, their prompt check, their stand-ins and where their files come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from styleprobe.metrics.base import Scorer
from styleprobe.metrics.weights_files import local_or_hub


class QualityScorer(Scorer):
    """A preference or aesthetic score of the output alone (and its prompt): role "quality", higher is better.

    `reference` names the original code the score follows (file and commit), recorded in the metric's identity.
    On the tiny and the toy world (`scoring.weights` tiny / toy) the scorer runs on its tiny random stand-in
    (`quality/stand_ins.py`): the toy world has no trained quality model, and its numbers are not about quality.
    """

    reference: ClassVar[str] = ""

    @property
    def stand_in(self) -> bool:
        return self.settings.weights in ("tiny", "toy")

    def describe_model(self) -> str:
        if self.settings.weights == "toy":
            return f"tiny random {self.family_name()} on toy images (not about image quality)"
        return super().describe_model()

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "reference": self.reference}

    def local_or_hub(self, checkpoint: Any, repo: str, filename: str, option: str = "checkpoint") -> Path:
        """A local file (`metrics.<name>.<option>`), or `filename` of Hub repository `repo` (`base.local_or_hub`)."""
        return local_or_hub(checkpoint, repo, filename, f"{self.name} weights", f"metrics.{self.name}.{option}")

    def file_needed(self, checkpoint: Any, repo: str, filename: str, what: str, option: str = "checkpoint") -> Any:
        """The `ModelFile` that `local_or_hub` will read, for the check before any image is made."""
        from styleprobe.models.files import ModelFile

        setting = f"metrics.{self.name}.{option}"
        if checkpoint:
            return ModelFile(f"{what} of {self.name}", str(checkpoint), (), setting)
        return ModelFile(f"{what} of {self.name}", repo, (filename,), setting)


def prompts_of(batch: Any) -> list[str]:
    """The batch's target prompts (the row's `prompt`, as CLIP-T scores it)."""
    return [str(p) for p in batch.prompts]


def image_and_prompt_cosines(batch: Any, model_key: Any, model: Any) -> Any:
    """Cosine of each output's image embedding and its prompt's text embedding under a two-tower preference model
    (`model`: `preprocess`, `encode_pixels`, `encode_texts`): the outputs encoded once per batch, each distinct prompt
    once per process, as CLIP-T does (`clip.TextCLIP`)."""
    from styleprobe.metrics.base import cached_rows, cosine, embedding_cache, output_embeddings

    images = output_embeddings(batch, model_key, model.preprocess, model.encode_pixels)
    prompts = prompts_of(batch)
    texts = cached_rows(embedding_cache(model_key, "text"), prompts, lambda idx: model.encode_texts([prompts[i] for i in idx]))
    return cosine(images, texts)
