"""Expand an experiment into work items, each keyed by a hash of every parameter behind its image.

The key is how a sweep resumes (done keys are skipped) and how shards split a plan: a job with
`shard.index=i, shard.count=n` takes the items whose key falls in bucket i of n.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from styleprobe.config import non_negative_number, positive_int
from styleprobe.data import PromptSpec, StyleReference
from styleprobe.errors import ConfigError
from styleprobe.layers import LayerMap, Pattern
from styleprobe.models import ModelSpec

KEY_LENGTH = 20


@dataclass(frozen=True)
class Sampler:
    """Settings of the denoising loop shared by every item of a run."""

    steps: int
    guidance: float
    height: int
    width: int
    scheduler: str = "default"
    negative_prompt: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> "Sampler":
        d = dict(cfg)
        steps, height, width = (positive_int(d.get(n), f"sampler.{n}") for n in ("steps", "height", "width"))
        for name, value in (("height", height), ("width", width)):
            if value % 8:
                raise ConfigError(f"sampler.{name}={value} is not a multiple of 8; the VAE needs multiples of 8")
        guidance = non_negative_number(d.get("guidance"), "sampler.guidance")
        scheduler = str(d.get("scheduler") or "default")
        if scheduler != "default" and not _is_scheduler_class(scheduler):
            raise ConfigError(
                f"sampler.scheduler={scheduler!r} is not a diffusers scheduler; use default or a class name "
                "such as EulerDiscreteScheduler, DDIMScheduler, DPMSolverMultistepScheduler"
            )
        return cls(steps, guidance, height, width, scheduler, str(d.get("negative_prompt") or ""))


def _is_scheduler_class(name: str) -> bool:
    import diffusers

    return name.endswith("Scheduler") and hasattr(diffusers, name)


@dataclass(frozen=True)
class WorkItem:
    """One image to make: a pattern, strengths, a reference, a prompt, a seed."""

    key: str
    row: dict[str, Any]  # every parameter, as the table stores it
    pattern: Pattern
    scale: float
    subtraction: float
    reference: StyleReference
    prompt: PromptSpec
    seed: int


def item_key(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def build_plan(
    *,
    model: ModelSpec,
    dtype: str,
    method: str,
    layer_map: LayerMap,
    patterns: Sequence[Pattern],
    scales: Sequence[float],
    subtractions: Sequence[float],
    references: Sequence[StyleReference],
    prompts: Sequence[PromptSpec],
    seeds: Sequence[int],
    sampler: Sampler,
) -> list[WorkItem]:
    """The full cross product; item keys hash every parameter that determines the image."""
    items = []
    for ref, prompt, seed, pattern, scale, sub in itertools.product(
        references, prompts, seeds, patterns, scales, subtractions
    ):
        layer_scales = {n: s for n, s in zip(layer_map.names, pattern.scales) if s}
        shared = {  # stored in the row and part of the key
            "dtype": dtype,
            "method": method,
            "injection": pattern.name,
            "scale": scale,
            "subtraction": sub,
            "style": ref.style,
            "content": ref.content,
            "prompt": prompt.prompt,
            "negative_prompt": sampler.negative_prompt,
            "seed": seed,
            "steps": sampler.steps,
            "guidance": sampler.guidance,
            "height": sampler.height,
            "width": sampler.width,
            "scheduler": sampler.scheduler,
        }
        key = item_key(
            {**shared, "model": model.identity, "layer_scales": layer_scales, "reference": ref.digest}
        )
        row = {
            "key": key,
            **shared,
            "model": model.name,
            "sweep": pattern.sweep,
            "target": pattern.target,
            "layers": json.dumps(layer_map.active_names(pattern.scales)),
            "n_layers": len(layer_scales),
            "layer_scales": json.dumps(layer_scales),
            "reference": str(ref.image),
            "reference_digest": ref.digest,
            "subject": prompt.subject,
            "base": model.base,
            "adapter": model.identity["adapter"],
        }
        items.append(WorkItem(key, row, pattern, scale, sub, ref, prompt, seed))
    return items


def check_shard(index: int, count: int) -> None:
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ConfigError(f"shard.index={index!r} shard.count={count!r}; need 0 <= index < count")


def in_shard(key: str, index: int, count: int) -> bool:
    """Whether `key` falls in bucket `index` of `count`: the same split for generation and scoring jobs."""
    return int(key[:12], 16) % count == index


def shard(items: Sequence[WorkItem], index: int, count: int) -> list[WorkItem]:
    """The items of shard `index` of `count`, split by key so every job sees the same split."""
    check_shard(index, count)
    return [it for it in items if in_shard(it.key, index, count)]
