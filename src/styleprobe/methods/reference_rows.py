"""Reference samples denoised in the same batch as the images that look at them.

Methods that share or swap self-attention with a reference image (StyleAligned; key/value swaps such as Visual
Style Prompting) put one extra sample per reference into the pipeline call, its *reference row*, and let each
image's attn1 layers read that row's queries, keys and values. What they have in common lives here:
- `ReferenceRow` and `ReferenceBatch`: one row per distinct reference the items use, reference rows first, then
  the items, and each sample's reference index (a reference row points to itself);
- the reference rows' latents: their own noise, or a prepared trajectory (an inverted or forward-noised real
  image, `zts[0]` the noisiest ... `zts[steps]` the clean latent) replayed from an offset, with the callback that
  puts the trajectory back after every step (`replay_latents`);
- `prepare_trajectories`: each reference's trajectory made once, kept in memory and as a keyed artefact of the
  results folder, with its cost as a record for the run;
- `ReferenceAttention`: an attend step (`methods.attention.AttendStep`) that knows each sample's reference row
  and layers; a method says only what a sample computes from its own and its reference's q, k, v.
How a trajectory is made (StyleAligned's DDIM inversion) and what a sample does with its reference's attention
(StyleAligned's AdaIN and shared keys) stay in each method's package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from styleprobe.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used, so planning a sweep never waits for it
    import torch
    from PIL import Image

    from styleprobe.methods.base import ArtefactStore, Generator, Item

log = logging.getLogger("styleprobe")

#: key -> (trajectory, its metadata): trajectories made or read in this process
Trajectories = dict[str, "tuple[torch.Tensor, dict[str, Any]]"]


class ReferenceRow(NamedTuple):
    """A reference sample of a batch: its caption, the trajectory it replays ("" for none), its seed.

    Items whose rows are equal share one reference row in a batch.
    """

    caption: str
    trajectory: str  # the key of the prepared trajectory it replays; "" when it is generated from its own noise
    seed: int  # a generated reference's noise (unused when it replays a trajectory)
    private: str  # the item that owns it when a sample changes its reference (joint attention), else ""


def replay_latents(zts: torch.Tensor, offset: int, step: int) -> torch.Tensor:
    """The reference's latent after generation step `step` (0-based): zts[max(offset + 1, step + 1)]."""
    return zts[max(offset + 1, step + 1)]


@dataclass(frozen=True)
class ReferenceBatch:
    """The samples of one pipeline call: `refs` (one row per distinct reference) first, then the items."""

    refs: tuple[ReferenceRow, ...]
    item_refs: tuple[int, ...]  # each item's reference row

    @classmethod
    def of(cls, wanted: Sequence[ReferenceRow]) -> ReferenceBatch:
        """The batch for items wanting these reference rows, in order (equal rows become one)."""
        refs = tuple(dict.fromkeys(wanted))
        return cls(refs, tuple(refs.index(w) for w in wanted))

    @property
    def n_refs(self) -> int:
        return len(self.refs)

    @property
    def size(self) -> int:
        return len(self.refs) + len(self.item_refs)

    def ref_index(self) -> torch.Tensor:
        """(size,) long: each sample's reference row; a reference row points to itself."""
        import torch

        return torch.tensor(list(range(self.n_refs)) + list(self.item_refs))

    def latents(self, engine: Generator, sampler: Any, item_seeds: Sequence[int], trajectories: Trajectories,
                offset: int) -> torch.Tensor:
        """Initial latents: each sample's own noise, a replayed reference at its trajectory's `offset`."""
        latents = engine.noise([r.seed for r in self.refs] + list(item_seeds), sampler)
        for row, zts in self.replayed(trajectories).items():
            latents[row] = zts[offset].to(latents.device, latents.dtype)
        return latents

    def replayed(self, trajectories: Trajectories) -> dict[int, torch.Tensor]:
        """Reference row -> the trajectory it replays."""
        return {row: trajectories[r.trajectory][0] for row, r in enumerate(self.refs) if r.trajectory}

    def replay_callback(self, trajectories: Trajectories, offset: int) -> Callable[..., dict[str, Any]] | None:
        """diffusers' `callback_on_step_end` that sets each replayed reference row back on its trajectory."""
        replay = self.replayed(trajectories)
        if not replay:
            return None

        def follow_trajectories(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            out = kwargs["latents"]
            for row, zts in replay.items():
                out[row] = replay_latents(zts, offset, step).to(out.device, out.dtype)
            return {"latents": out}

        return follow_trajectories

    def denoise(self, engine: Generator, sampler: Any, item_prompts: Sequence[str], item_seeds: Sequence[int],
                trajectories: Trajectories, offset: int = 0) -> list[Image.Image]:
        """One pipeline call over reference rows and items; the items' images, in order."""
        latents = self.latents(engine, sampler, item_seeds, trajectories, offset)
        prompts = [r.caption for r in self.refs] + list(item_prompts)
        images = engine.denoise(sampler, prompts, latents,
                                callback_on_step_end=self.replay_callback(trajectories, offset))
        return images[self.n_refs:]


def prepare_trajectories(
    engine: Generator,
    items: Sequence[Item],
    store: ArtefactStore,
    cache: Trajectories,
    *,
    key_of: Callable[[Item], str],
    make: Callable[[Any, Item], tuple[torch.Tensor, dict[str, Any]]],
    artefact: str,
    what: str,
    label: str,
    tensor: str = "zts",
) -> list[dict[str, Any]]:
    """Each reference trajectory the items replay, made once, kept in `cache` and as a keyed artefact.

    `key_of(item)` names the trajectory ("" for none); `make(model, item)` returns it and its metadata (with
    `seconds` and `steps`). A trajectory already in the results folder is read back; one made earlier in this
    process for another folder is written there too, never made twice. One record per trajectory used (what,
    key, style, seconds, steps, peak GPU memory, whether it was found already made), for the run's costs.
    """
    from styleprobe.progress import Progress

    todo = {key_of(it): it for it in items if key_of(it)}
    records = []
    with Progress(len(todo), label, "reference") as bar:
        for key, it in todo.items():
            records.append(_prepare_one(engine, store, cache, key, it, make, artefact, what, tensor))
            bar.update()
    return records


def _prepare_one(engine: Generator, store: ArtefactStore, cache: Trajectories, key: str, item: Item,
                 make: Callable[[Any, Item], tuple[torch.Tensor, dict[str, Any]]], artefact: str, what: str,
                 tensor: str) -> dict[str, Any]:
    """One reference's trajectory: read from the results folder, made earlier in this process, or made now."""
    from styleprobe.models.devices import peak_memory, reset_peak_memory

    reused = store.has_artefact(artefact, key)
    if reused:
        if key not in cache:
            tensors, meta = store.read_tensors(artefact, key)
            cache[key] = (tensors[tensor], meta)
    else:
        if key not in cache:  # made in this process for another results folder: stored there too
            reset_peak_memory(engine.model.device)
            zts, meta = make(engine.model, item)
            cache[key] = (zts, {**meta, "peak_gpu_bytes": peak_memory(engine.model.device)})
            log.debug("%s: %s (%d steps) in %.1f s", what, item.reference.style, meta["steps"], meta["seconds"])
        zts, meta = cache[key]
        store.write_tensors(artefact, key, {tensor: zts}, meta)
    meta = cache[key][1]
    return {"what": what, "key": key, "style": item.reference.style, "seconds": round(float(meta["seconds"]), 3),
            "steps": int(meta["steps"]), "peak_gpu_bytes": meta.get("peak_gpu_bytes"), "reused": reused}


@dataclass
class ReferenceAttention:
    """An attend step for samples that look at a reference row of the same call, in the layers each one names.

    `ref_index` and `layers` are over the call's samples (one CFG half); with CFG the UNet sees both halves,
    [unconditional, conditional], and each sample's reference is in its own half. Samples whose layer is off (and
    reference rows, whose layers are all off) compute plain attention, so an image does not depend on its
    batch-mates. Subclasses say what the sharing samples compute (`share`).
    """

    ref_index: torch.Tensor  # (B,) long: each sample's reference row (a reference row points to itself)
    layers: torch.Tensor  # (B, n_layers) bool: where each sample looks at its reference

    def __post_init__(self) -> None:
        self._given_layers = self.layers

    def switch(self, on: torch.Tensor) -> None:
        """For the coming steps: the items (the batch's last `len(on)` samples) whose `on` is false look at nothing
        (a step outside their window); the others at their layers."""
        mask = self._item_mask(on)
        self.layers = self._given_layers & mask[:, None]

    def _item_mask(self, on: torch.Tensor) -> torch.Tensor:
        """(B,) bool: true for the reference rows and for the items that are on."""
        import torch

        mask = torch.ones(self.ref_index.shape[0], dtype=torch.bool)
        mask[mask.shape[0] - on.shape[0]:] = on.to(torch.bool)
        return mask

    def expand(self, x: torch.Tensor, batch: int, index: bool = False) -> torch.Tensor:
        """A per-sample tensor for a UNet batch of `batch`: as it is, or repeated for CFG's two halves."""
        import torch

        n = self.ref_index.shape[0]
        if batch == n:
            return x
        if batch != 2 * n:
            raise ValueError(f"a UNet batch of {batch} does not fit a reference plan for {n} samples")
        return torch.cat([x, x + n]) if index else torch.cat([x, x])

    def check_layers(self, n_layers: int) -> None:
        if self.layers.ndim != 2 or self.layers.shape[1] != n_layers:
            raise ValueError(f"layers must have shape (batch, {n_layers}), got {tuple(self.layers.shape)}")

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
               layer: int) -> torch.Tensor:
        """Attention per sample: the method's where the sample's layer is on, plain elsewhere."""
        import torch

        from styleprobe.methods.attention import plain_attention

        batch = query.shape[0]
        active = self.expand(self.layers[:, layer], batch).to(query.device)
        if not bool(active.any()):
            return plain_attention(query, key, value, mask)
        if mask is not None:
            raise ValueError("styleprobe's reference attention does not take attention masks on the layers it changes")
        out = torch.empty_like(query)
        rows = active.nonzero().flatten()
        refs = self.expand(self.ref_index, batch, index=True).to(query.device)[rows]
        done = torch.zeros_like(active)
        done[self.share(query, key, value, rows, refs, out)] = True
        rest = (~done).nonzero().flatten()
        if len(rest):
            out[rest] = plain_attention(query[rest], key[rest], value[rest])
        return out

    def share(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor,
              refs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the attention of samples `rows` (whose references are rows `refs`) into `out`; return the rows
        written (usually `rows`; more when a sample changes its reference too). The rest get plain attention."""
        raise NotImplementedError


class ReferenceRowMethod:
    """The planning hooks every reference-row method shares (a mixin ahead of `methods.base.Method`).

    Such a method prompts its images and its reference rows from two templates (`prompt_template`,
    `reference_prompt_template` knobs), keys both prompts, may prepare one trajectory per reference (an inversion,
    a noised real image: `trajectory_key`, "" for none, stored in the row as `trajectory_column`), and batches items
    with equal knobs (one call's loop rules come from its knobs). Its `_reference_row(item)` says which reference row
    an item looks at, from which the call's UNet rows are counted.
    """

    trajectory_column: str = "trajectory_key"

    def trajectory_key(self, parts: Any) -> str:
        """What determines the reference's prepared trajectory; "" when the reference row is generated."""
        return ""

    def prompt_used(self, parts: Any) -> str:
        from styleprobe.methods.prompt_templates import fill

        return fill(parts.knobs.prompt_template, parts)

    def reference_prompt(self, parts: Any) -> str:
        from styleprobe.methods.prompt_templates import fill

        return fill(parts.knobs.reference_prompt_template, parts)

    def prepare_keys(self, parts: Any) -> list[str]:
        key = self.trajectory_key(parts)
        return [key] if key else []

    def key_fields(self, parts: Any) -> dict[str, Any]:
        return {**super().key_fields(parts), "prompt_used": self.prompt_used(parts),  # type: ignore[misc]
                "reference_prompt": self.reference_prompt(parts)}

    def row_fields(self, parts: Any) -> dict[str, Any]:
        return {**super().row_fields(parts), "reference_prompt": self.reference_prompt(parts),  # type: ignore[misc]
                self.trajectory_column: self.trajectory_key(parts)}

    def batch_key(self, item: Any) -> tuple[Any, ...]:
        return (item.knobs,)

    @staticmethod
    def check_templates(knobs: Any, where: str) -> None:
        """Both prompt templates fill (for `check_knobs`)."""
        from styleprobe.methods.prompt_templates import check_template

        for name in ("prompt_template", "reference_prompt_template"):
            check_template(getattr(knobs, name), f"{where}.{name}")

    @staticmethod
    def check_switch_patterns(entry: Any, acts: str) -> None:
        """Patterns must switch layers fully on or off (for `check_entry`): a reference-row layer has no strength.
        `acts` says what the method does to a layer ("StyleAligned shares")."""
        for pattern in entry.patterns:
            odd = sorted({s for s in pattern.scales if s not in (0.0, 1.0)})
            if odd:
                raise ConfigError(f"pattern {pattern.name!r} gives scale {odd[0]:g} to a layer, but {acts} "
                                  f"a layer or not; give such patterns as layers: [names]")

    def _reference_row(self, item: Any) -> ReferenceRow:
        raise NotImplementedError

    def pipeline_rows(self, items: Sequence[Any]) -> int:
        """The reference rows the items need, and the items."""
        return ReferenceBatch.of([self._reference_row(it) for it in items]).size
