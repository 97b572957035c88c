"""The toy world's ground truth as a metric: its judge (`styleprobe.models.toy.classifier`) reads each output's shape and
style.

In the toy world style and content are known, and the judge, a small CNN trained on the world's own images, tells an
image's shape and style at 99.6% and 100% on held-out images (chance 12.5%). Per output it fills three columns, each
1 or 0, so that their means are rates:

- `judge_style`: the judge's style class of the output is the reference's (the judge classifies the reference too;
  on the toy references it is right every time);
- `judge_shape`: the output shows the prompted shape: the toy shape that the row's target subject names ("a star");
  empty where the subject names no toy shape;
- `judge_leak`: the output shows the reference's shape instead: the reference's shape (its content label where that
  names a toy shape, else the judge's reading of the reference) and not the prompted one; empty where the reference
  shows the prompted shape, or the subject names no toy shape (no leak can be told apart).

The judge knows the toy world only, so the scorer refuses any weights but the toy's (`scoring.weights`, which `auto`
sets to `toy` for model=toy's results) when scorers are built, before any model loads. Its numbers are findings about
the toy, not about SDXL. Images are read as the judge was trained on them: RGB at the world's 64 px (others resized
with a box filter), scaled to [-1, 1].
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from styleprobe.errors import ConfigError
from styleprobe.metrics.base import (
    ScoreBatch,
    Scorer,
    ScorerSettings,
    cached_rows,
    embedding_cache,
    inference_mode,
    register,
    shared_model,
)
from styleprobe.models.toy import world  # numpy and PIL only: building the scorer imports no torch

if TYPE_CHECKING:
    import torch

log = logging.getLogger("styleprobe")

SHAPES, SIZE = world.CONTENTS, world.SIZE  # the judge's shape classes, by index; its style classes are world.STYLES
_SHAPE_WORD = re.compile(r"\b(" + "|".join(SHAPES) + r")(?:e?s)?\b", re.IGNORECASE)


def shape_class(text: str) -> int | None:
    """The toy shape a subject or content label names ("a star", "two red hearts"), or None: no shape, or several."""
    named = {m.group(1).lower() for m in _SHAPE_WORD.finditer(str(text or ""))}
    return SHAPES.index(named.pop()) if len(named) == 1 else None


def judge_pixels(images: list[Image.Image]) -> torch.Tensor:
    """Images as the judge reads them: (N, 3, 64, 64) float32 in [-1, 1], as `world.batch` makes them."""
    import torch

    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (SIZE, SIZE):
            im = im.resize((SIZE, SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(im, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2) / 127.5 - 1.0)


class Judge:
    """The toy world's judge on a device: image tensors -> (shape classes, style classes)."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype):
        self.model = model.to(device, dtype).eval()
        self.device, self.dtype = device, dtype

    @classmethod
    def load(cls, device: torch.device, dtype: torch.dtype) -> Judge:
        from styleprobe.errors import ModelUnavailableError
        from styleprobe.models.toy.assemble import weights_folder
        from styleprobe.models.toy.classifier import load_classifier

        path = weights_folder() / "classifier.safetensors"
        if not path.is_file():
            raise ModelUnavailableError(f"the toy world's judge weights are not in {path.parent}; "
                                        "run `python -m styleprobe.models.toy.train` (or reinstall styleprobe)")
        return cls(load_classifier(path), device, dtype)

    @inference_mode
    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 2) int64: each image's shape class and style class."""
        import torch

        shape, style = self.model(pixels.to(self.device, self.dtype))
        return torch.stack([shape.argmax(1), style.argmax(1)], dim=1).cpu()


@register
class ToyJudge(Scorer):
    """The judge's verdict per output: the reference's style, the prompted shape, the reference's shape leaked."""

    kind: ClassVar[str] = "toy_judge"
    option_names: ClassVar[tuple[str, ...]] = ("shape_column", "leak_column")

    def __init__(self, settings: ScorerSettings):
        if settings.weights != "toy":
            raise ConfigError(
                f"metrics.{settings.name}: the toy_judge scorer reads toy-world images only, and these are scored with "
                f"{settings.weights!r} weights; score model=toy's results (scoring.weights=auto or toy), or leave "
                f"{settings.name} out (metrics=default)"
            )
        super().__init__(settings)
        self.shape_column = str(settings.options.get("shape_column", "judge_shape"))
        self.leak_column = str(settings.options.get("leak_column", "judge_leak"))
        self._warned = False

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.name, self.shape_column, self.leak_column)

    def family_name(self) -> str:
        return "judge CNN, shape and style classes"

    def architecture(self) -> str:
        return "styleprobe toy judge CNN"

    def weights_name(self) -> str:
        return "styleprobe toy judge"

    def _model_key(self) -> tuple[Any, ...]:
        return ("toy_judge", str(self.settings.device), str(self.settings.dtype))

    def judge(self) -> Judge:
        settings = self.settings
        return shared_model(self._model_key(), lambda: Judge.load(settings.torch_device, settings.torch_dtype))

    def classes(self, batch: ScoreBatch) -> tuple[np.ndarray, np.ndarray]:
        """(outputs' (shape, style) classes, references' (shape, style) classes), each (N, 2); every reference is
        classified once per process, the outputs once per batch."""
        judge = self.judge()
        outputs = batch.once((self._model_key(), "images"), lambda: judge.classify(judge_pixels(batch.images)))
        references = cached_rows(embedding_cache(self._model_key(), "reference"), batch.reference_ids,
                                 lambda idx: judge.classify(judge_pixels([batch.references[i] for i in idx])))
        return outputs.numpy(), references.numpy()

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        out, ref = self.classes(batch)
        prompted = np.array([np.nan if (c := shape_class(s)) is None else c for s in batch.subjects], dtype=float)
        labelled = [shape_class(c) for c in batch.contents]
        ref_shape = np.array([ref[i, 0] if c is None else c for i, c in enumerate(labelled)], dtype=float)
        unknown = np.isnan(prompted)
        if unknown.any() and not self._warned:
            self._warned = True
            log.warning("%s: %d of %d prompts name no toy shape (e.g. %r), so %s and %s stay empty for them; toy "
                        "prompts name one of %s", self.name, int(unknown.sum()), len(batch),
                        batch.subjects[int(np.argmax(unknown))], self.shape_column, self.leak_column, ", ".join(SHAPES))
        style = (out[:, 1] == ref[:, 1]).astype(float)
        shape = np.where(unknown, np.nan, (out[:, 0] == prompted).astype(float))
        leak = np.where(unknown | (ref_shape == prompted), np.nan, (out[:, 0] == ref_shape).astype(float))
        return {self.name: style, self.shape_column: shape, self.leak_column: leak}
