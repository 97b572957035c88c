"""Expand an experiment into work items, each keyed by a hash of every parameter behind its image.

The plan crosses each method entry's knob combinations, layer patterns and denoising windows with the shared axes
(style reference, prompt, seed); the method's sampler is part of the entry. The key is how a sweep resumes (done keys
are skipped) and how shards split a plan: a job with `shard.index=i, shard.count=n` takes the items whose shard
key falls in bucket i of n (the key itself, or the key of the per-reference work the item needs, so a LoRA is
trained and a reference inverted by one job only). What an item's key hashes is the shared columns plus the
method's `key_fields`, the model's identity (with the method's `model_identity`), the per-layer scales and the
reference's content hash (and the window, unless it is the full one):
for IP-Adapter exactly what styleprobe hashed before methods were plug-ins.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.data.style_sets import StyleReference
from styleprobe.errors import ConfigError
from styleprobe.methods.base import Method, MethodEntry, Parts
from styleprobe.models.layers import LayerMap, Pattern
from styleprobe.models.presets import ModelSpec
from styleprobe.run.sampler import Sampler
from styleprobe.run.windows import FULL, Window

KEY_LENGTH = 20


@dataclass(frozen=True)
class WorkItem:
    """One image to make: a method entry with its knobs, a pattern, a reference, a prompt, a seed."""

    key: str
    row: dict[str, Any]  # every parameter, as the table stores it
    entry: MethodEntry
    knobs: Any  # the method's knob values (its Knobs dataclass)
    pattern: Pattern  # on the method's site, as the method applies it
    reference: StyleReference
    prompt: PromptSpec
    seed: int
    window: Window = FULL  # the denoising steps the pattern acts on

    @property
    def shard_key(self) -> str:
        """What decides the item's shard: its first per-reference work key (a LoRA, an inversion), else its own key."""
        return shard_key(self.key, self.row.get("prepare_keys", ""))

    @property
    def method(self) -> Method:
        return self.entry.method

    @property
    def sampler(self) -> Sampler:
        return self.entry.sampler


def item_key(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def make_item(parts: Parts, entry: MethodEntry) -> WorkItem:
    """The item of one combination: its key and its row."""
    method, sampler, ref, prompt = entry.method, parts.sampler, parts.reference, parts.prompt
    digest = ref.digest  # a stat of the file each time it is asked for
    layer_map = entry.layer_map
    pattern = method.effective_pattern(parts.pattern, parts.knobs, layer_map)
    window = method.effective_window(pattern, parts.knobs, parts.window)
    parts = dataclasses.replace(parts, pattern=pattern, window=window)
    layer_scales, layers_json, layer_scales_json = _pattern_columns(layer_map, pattern.scales)
    shared = {  # stored in the row and part of the key
        "dtype": parts.dtype,
        "method": method.name,
        "injection": pattern.name,
        "style": ref.style,
        "content": ref.content,
        "prompt": prompt.prompt,
        "negative_prompt": sampler.negative_prompt,
        "seed": parts.seed,
        "steps": sampler.steps,
        "guidance": sampler.guidance,
        "height": sampler.height,
        "width": sampler.width,
        "scheduler": sampler.scheduler_id,
    }
    model_identity = {**parts.spec.base_identity, **method.model_identity(parts.spec)}
    when = {} if window.full else {"window": [window.start, window.end]}  # full: the keys made before windows
    key = item_key({**shared, **method.key_fields(parts), "model": model_identity, "layer_scales": layer_scales,
                    "reference": digest, **when})
    row = {
        "key": key,
        **shared,
        **method.row_fields(parts),
        "model": parts.spec.name,
        "sweep": pattern.sweep,
        "target": pattern.target,
        "layers": layers_json,
        "n_layers": len(layer_scales),
        "layer_scales": layer_scales_json,
        **window.columns(sampler.steps),
        "reference": str(ref.image),
        "reference_digest": digest,
        "subject": prompt.subject,
        "prompt_used": method.prompt_used(parts),
        "prepare_keys": json.dumps(method.prepare_keys(parts)),
        "knob_columns": _knob_columns(type(parts.knobs), frozenset(method.replicate_knobs)),
        "base": parts.spec.base,
    }
    if method.replicate_knobs:  # a replicate of the unit (e.g. a training seed), resampled with it by analysis
        row["replicate"] = ",".join(f"{k}={getattr(parts.knobs, k)}" for k in sorted(method.replicate_knobs))
    return WorkItem(key, row, entry, parts.knobs, pattern, ref, prompt, parts.seed, window)


@functools.lru_cache(maxsize=4096)
def _pattern_columns(layer_map: LayerMap, scales: tuple[float, ...]) -> tuple[dict[str, float], str, str]:
    """A pattern's per-layer scales (for the key; read-only), its active names and its scales as the row stores them:
    once per pattern, not once per item (a plan repeats each pattern for every reference, prompt and seed)."""
    layer_scales = {n: s for n, s in zip(layer_map.names, scales) if s}
    return layer_scales, json.dumps(layer_map.active_names(scales)), json.dumps(layer_scales)


@functools.lru_cache(maxsize=256)
def _knob_columns(knobs: type, replicates: frozenset[str]) -> str:
    """The knobs a row's method varies over (replicates left out), as the row stores them."""
    return json.dumps([f.name for f in dataclasses.fields(knobs) if f.name not in replicates])


def build_plan(
    *,
    model: ModelSpec,
    dtype: str,
    entries: Sequence[MethodEntry],
    references: Sequence[StyleReference],
    prompts: Sequence[PromptSpec],
    seeds: Sequence[int],
) -> list[WorkItem]:
    """The full cross product, per method entry; an item planned twice (two entries alike) is kept once."""
    items: dict[str, WorkItem] = {}
    for entry in entries:
        entry.method.check_entry(entry, model)
        for knobs in entry.variants:
            use = entry.method.content_label_use(knobs)
            if use:
                _require_content(references, f"{entry.method.name}'s {use}")
            for ref, prompt, seed, pattern, window in itertools.product(references, prompts, seeds, entry.patterns,
                                                                        entry.windows):
                parts = Parts(model, dtype, entry.sampler, knobs, pattern, ref, prompt, seed, entry.layer_map,
                              tuple(references), window)
                item = make_item(parts, entry)
                items.setdefault(item.key, item)
    return list(items.values())


def _require_content(references: Sequence[StyleReference], use: str) -> None:
    missing = [r for r in references if not r.content.strip()]
    if missing:
        raise ConfigError(
            f"style reference {missing[0].image} has no content label, which {use} needs ({len(missing)} of "
            f"{len(references)} lack one); fill in the manifest's content column with what each image shows, e.g. a rabbit"
        )


def check_shard(index: int, count: int) -> None:
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ConfigError(f"shard.index={index!r} shard.count={count!r}; need 0 <= index < count")


def shard_of(key: str, count: int) -> int:
    """The bucket of `count` that `key` falls in: the same split for generation, scoring and status."""
    return int(key[:12], 16) % count


def in_shard(key: str, index: int, count: int) -> bool:
    """Whether `key` falls in bucket `index` of `count`."""
    return shard_of(key, count) == index


def shard_key(key: str, prepare_keys: str | None) -> str:
    """An item's shard key from its row: the first key of its `prepare_keys` (JSON list), else the item key.

    Items that need the same per-reference work (one B-LoRA, one inversion) share a shard key, so one job does it.
    """
    keys = json.loads(prepare_keys) if isinstance(prepare_keys, str) and prepare_keys else []
    return str(keys[0]) if keys else key


def shard(items: Sequence[WorkItem], index: int, count: int) -> list[WorkItem]:
    """The items of shard `index` of `count`, split by shard key so every job sees the same split."""
    check_shard(index, count)
    if count == 1:
        return list(items)
    return [it for it in items if in_shard(it.shard_key, index, count)]
