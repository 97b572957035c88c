"""Scoring metrics: a registry of scorers, each chosen by name in the `metrics` config group.

    scorer kind   module   columns
    style_clip    clip     cosine of CLIP image embeddings, output vs style reference
    text_clip     clip     cosine of CLIP image and prompt embeddings
    leak_clip     clip     cosine to "a <reference content>", its margin over "a <target subject>", leak-free flag
    style_dino    dino     cosine of DINO / DINOv2 CLS embeddings, output vs reference
    style_csd     csd      dot product of CSD style vectors, output vs reference
    toy_judge     judge    the toy world's judge: reference's style, prompted shape, reference's shape leaked (rates)

A metric config names its column (the config's key) and its scorer kind, plus the kind's options.
Building scorers and reading their identities imports no torch: that happens when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from styleprobe.errors import ConfigError
from styleprobe.metrics.base import ScoreBatch, Scorer, ScorerSettings, registry, release_models

__all__ = ["ScoreBatch", "Scorer", "ScorerSettings", "build_scorers", "registry", "release_models"]


def build_scorers(
    metrics: Mapping[str, Mapping[str, Any]], device: Any, weights: str, preprocess_on_device: bool = False,
    dtype: Any = "float32",
) -> list[Scorer]:
    """Scorers for the `metrics` config (name -> {scorer: kind, ...options}); no model is loaded yet.

    `device` and `dtype` are names ("cuda", "bfloat16"); a torch.device or torch.dtype is taken as its name
    (`ScorerSettings`).
    """
    kinds = registry()
    scorers: list[Scorer] = []
    for name, options in metrics.items():
        if not isinstance(options, Mapping) or "scorer" not in options:
            raise ConfigError(f"metrics.{name} needs a `scorer:` naming its kind, one of {', '.join(sorted(kinds))}")
        kind = options["scorer"]
        if kind not in kinds:
            raise ConfigError(f"metrics.{name}: unknown scorer {kind!r}; choose one of {', '.join(sorted(kinds))}")
        scorers.append(kinds[kind](ScorerSettings(str(name), dict(options), device, weights, preprocess_on_device, dtype)))
    columns: dict[str, str] = {}
    for s in scorers:
        for col in (*s.columns, s.model_column):
            if col in columns:
                raise ConfigError(f"metrics {columns[col]} and {s.name} both write column {col!r}; rename one")
            columns[col] = s.name
    return scorers
