"""StyleAligned (Hertz et al., arXiv 2312.02133; google/style-aligned) as a styleprobe method.

Every image attends, in the self-attention (`attn1`) layers its layer pattern selects, to a reference image
generated alongside it in the same batch (`shared_attention.py`: AdaIN of queries and keys, shared keys and
values, a score shift on the reference's tokens, optionally shared GroupNorm statistics). The defaults are the
original's real-image recipe (`style_aligned_transfer_sdxl.ipynb`), because a style set holds real images:
- `reference_mode: inversion`: the style set's image is DDIM-inverted (`inversion.py`) with the caption
  "<content>, <style>." for 50 steps at guidance 2, once per (reference, model, sampler, inversion settings),
  and stored in the results folder (`artefacts/inversion/`, with its cost); during generation the reference
  sample replays that trajectory from offset 5;
- generation: DDIM (beta 0.00085..0.012 scaled_linear, clip_sample off, set_alpha_to_one off, no step offset),
  50 steps (as many as the inversion: required), guidance 10, `shared_score_shift = log 2`, shared norms on;
- prompts: "<prompt>, <style>." for the images, where <style> is the manifest's `style_prompt` when given, else
  its `style`; the exact prompt is stored in `prompt_used`, the reference's in `reference_prompt`.
`reference_mode: generated` is the original's text-to-image path (`style_aligned_sdxl.ipynb`): the reference is
generated from its caption alongside (seed `reference_seed`, else the item's own), its pixels never used.

Layer patterns select `attn1` sites: `none` shares no attention (GroupNorm statistics are still shared when
`share_group_norm` is on: the original shares them everywhere, independent of attention layers), `style` shares
only `up_blocks.0.attentions.1`, one-hot and leave-one-out sweeps move the sharing layer by layer.

Where this differs from the original on purpose (see also `shared_attention.py`):
- each sample names its own reference and sharing layers, so items with different references, prompts, seeds and
  patterns share one call and an image does not depend on its batch-mates;
- `full_attention_share` groups a sample with its own reference only (a private reference row per sample);
- `share_layer_norm` has no numeric effect (LayerNorm is per token), so it is recorded but not part of the key;
- `only_self_level` is guarded against the original's division by zero, and applied when the plan is made, so
  a row's `layers` column lists the layers that really share;
- patterns must switch layers fully on or off: a shared layer has no strength.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from styleprobe.errors import ConfigError
from styleprobe.methods.base import Method, MethodEntry, Parts, register
from styleprobe.methods.reference_rows import ReferenceRow, ReferenceRowMethod
from styleprobe.models.layers import LayerMap, Pattern

if TYPE_CHECKING:  # torch is imported where it is used, so planning a sweep never waits for it
    import torch

MODES = ("inversion", "generated")
ARTEFACT = "inversion"


@dataclass(frozen=True)
class StyleAlignedKnobs:
    reference_mode: str = "inversion"  # inversion: DDIM-invert the style set's image; generated: make it from its caption
    adain_queries: bool = True
    adain_keys: bool = True
    adain_values: bool = False
    shared_score_scale: float = 1.0  # multiplies the reference's keys (the notebook: 0.5 for famous images)
    shared_score_shift: float = math.log(2)  # added to the logits of the reference's tokens (real-image notebook)
    share_group_norm: bool = True
    share_layer_norm: bool = True  # no numeric effect (LayerNorm is per token); recorded, not keyed
    full_attention_share: bool = False
    only_self_level: float = 0.0  # the share of attn1 layers switched off (original's rule)
    inversion_steps: int | None = None  # null: the generation's step count (they must be equal)
    inversion_guidance: float = 2.0
    inversion_offset: int = 5  # the reference starts from zts[offset] and replays zts[max(offset + 1, i + 1)]
    reference_seed: int | None = None  # generated mode: the reference's seed (null: the item's seed)
    prompt_template: str = "{prompt}, {style}."
    reference_prompt_template: str = "{content}, {style}."


@dataclass
class StyleAlignedState:
    """StyleAligned on one loaded pipeline: the attn1 state its plans go into (`methods.attention.SelfAttention`),
    inverted trajectories in memory."""

    sharing: Any
    inversions: dict[str, tuple[torch.Tensor, dict[str, Any]]] = field(default_factory=dict)  # key -> (zts, metadata)


@register
class StyleAligned(ReferenceRowMethod, Method):
    """Shared self-attention with a reference in the batch, the reference DDIM-inverted from the style set's image."""

    name: ClassVar[str] = "style_aligned"
    trajectory_column: ClassVar[str] = "inversion_key"  # the row column its rows have always had
    pattern_site: ClassVar[str] = "attn1"
    window_support: ClassVar[str] = "per_sample"  # sharing and shared norms switched per sample, per step
    Knobs: ClassVar[type] = StyleAlignedKnobs
    unkeyed: ClassVar[frozenset[str]] = frozenset({"share_layer_norm"})
    sampler_defaults: ClassVar[dict[str, Any]] = {  # the real-image notebook's generation
        "steps": 50, "guidance": 10.0, "scheduler": "DDIMScheduler",
        "scheduler_options": {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 0},
    }

    # planning ------------------------------------------------------------------------------------------
    def check_knobs(self, knobs: StyleAlignedKnobs, where: str) -> None:
        from styleprobe.config import non_negative_number

        if knobs.reference_mode not in MODES:
            raise ConfigError(f"{where}.reference_mode={knobs.reference_mode!r}; choose one of {', '.join(MODES)}")
        non_negative_number(knobs.shared_score_scale, f"{where}.shared_score_scale")
        non_negative_number(knobs.inversion_guidance, f"{where}.inversion_guidance")
        if not math.isfinite(knobs.shared_score_shift):
            raise ConfigError(f"{where}.shared_score_shift={knobs.shared_score_shift}; give a finite number (log 2 = 0.693...)")
        if not 0 <= knobs.only_self_level <= 1:
            raise ConfigError(f"{where}.only_self_level={knobs.only_self_level}; give a share between 0 and 1")
        if knobs.inversion_offset < 0 or (knobs.inversion_steps is not None and knobs.inversion_steps < 1):
            raise ConfigError(f"{where}: inversion_offset must be >= 0 and inversion_steps >= 1 (or null)")
        if knobs.reference_seed is not None and knobs.reference_seed < 0:
            raise ConfigError(f"{where}.reference_seed={knobs.reference_seed}; give a non-negative seed or null")
        self.check_templates(knobs, where)

    def check_model(self, spec: Any, where: str) -> None:
        if spec.family != "sdxl":
            raise ConfigError(f"{where}: StyleAligned runs on SDXL-family models (its inversion uses SDXL's added "
                              f"conditions); model {spec.name} is {spec.family}")

    def check_entry(self, entry: MethodEntry, spec: Any) -> None:
        where = f"method.{entry.name}"
        steps = entry.sampler.steps
        for knobs in entry.variants:
            if knobs.reference_mode == "inversion":
                if entry.sampler.scheduler != "DDIMScheduler":
                    raise ConfigError(
                        f"{where}: a DDIM-inverted reference is replayed step by step, so generation must use "
                        f"DDIMScheduler, not {entry.sampler.scheduler_id}; set {where}.sampler.scheduler=DDIMScheduler "
                        f"(or leave sampler.scheduler null)"
                    )
                if knobs.inversion_steps is not None and knobs.inversion_steps != steps:
                    raise ConfigError(
                        f"{where}: the reference is inverted in {knobs.inversion_steps} steps but generated in {steps}; "
                        f"StyleAligned replays the inversion step for step, so set both to the same number "
                        f"(sampler.steps={knobs.inversion_steps}, or {where}.inversion_steps=null to follow the sampler)"
                    )
                if knobs.inversion_offset + 1 > steps:
                    raise ConfigError(f"{where}.inversion_offset={knobs.inversion_offset} needs more than "
                                      f"{knobs.inversion_offset} steps; generation has {steps}")
        self.check_switch_patterns(entry, "StyleAligned shares")

    def content_label_use(self, knobs: StyleAlignedKnobs) -> str:
        if "{content}" not in knobs.reference_prompt_template:
            return ""
        what = "DDIM inversion" if knobs.reference_mode == "inversion" else "generating the reference"
        return f"reference caption for {what} ({knobs.reference_prompt_template!r})"

    def effective_pattern(self, pattern: Pattern, knobs: StyleAlignedKnobs, layer_map: LayerMap) -> Pattern:
        if not knobs.only_self_level:
            return pattern
        from styleprobe.methods.style_aligned.shared_attention import switched_off

        off = switched_off(len(layer_map), knobs.only_self_level)
        return Pattern(pattern.name, tuple(0.0 if o else s for s, o in zip(pattern.scales, off)), pattern.sweep, pattern.target)

    def effective_window(self, pattern: Pattern, knobs: StyleAlignedKnobs, window: Any) -> Any:
        """`none` still shares GroupNorm statistics when `share_group_norm` is on, so its window matters then."""
        return window if knobs.share_group_norm else super().effective_window(pattern, knobs, window)

    def inversion_key(self, parts: Parts) -> str:
        """What determines a reference's inverted trajectory; empty in generated mode."""
        from styleprobe.run.plan import item_key

        knobs, sampler = parts.knobs, parts.sampler
        if knobs.reference_mode != "inversion":
            return ""
        return item_key({
            "kind": "ddim_inversion", "model": parts.spec.base_identity, "dtype": parts.dtype,
            "reference": parts.reference.digest, "caption": self.reference_prompt(parts), "steps": sampler.steps,
            "guidance": knobs.inversion_guidance, "height": sampler.height, "width": sampler.width,
            "scheduler": sampler.scheduler_id,
        })

    def trajectory_key(self, parts: Parts) -> str:
        return self.inversion_key(parts)

    # generation ----------------------------------------------------------------------------------------
    def state(self, model: Any) -> StyleAlignedState:
        from styleprobe.methods.style_aligned.shared_attention import install

        if self.name not in model.attached:
            model.attached[self.name] = StyleAlignedState(install(model.pipe.unet))
        return model.attached[self.name]

    def activate(self, model: Any) -> None:
        from styleprobe.methods.style_aligned.shared_attention import install

        install(model.pipe.unet)  # idempotent; puts ours back if loading another method reset the processors
        self.state(model)

    def deactivate(self, model: Any) -> None:
        """Nothing to undo: with no sharing plan in use, the processors and norms compute the plain model."""

    def prepare(self, engine: Any, items: Sequence[Any], store: Any) -> list[dict[str, Any]]:
        """Invert each reference the items replay, unless the results folder already holds that inversion.

        One record per inversion used (its key, seconds, peak GPU memory, whether it was found already made).
        """
        from styleprobe.methods.reference_rows import prepare_trajectories

        return prepare_trajectories(engine, items, store, self.state(engine.model).inversions,
                                    key_of=lambda it: it.row["inversion_key"], make=self._invert, artefact=ARTEFACT,
                                    what="ddim inversion", label=f"{self.name}: invert references")

    @staticmethod
    def _invert(model: Any, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """The reference's DDIM trajectory and what made it (the artefact's metadata, with its cost)."""
        from styleprobe.methods.style_aligned.inversion import ddim_invert

        sampler, knobs, caption = item.sampler, item.knobs, item.row["reference_prompt"]
        zts, seconds = ddim_invert(model.pipe, item.reference.load(), caption, sampler.steps, knobs.inversion_guidance,
                                   sampler.height, sampler.width)
        return zts, {
            "seconds": seconds, "caption": caption, "reference_digest": item.reference.digest,
            "style": item.reference.style, "steps": sampler.steps, "guidance": knobs.inversion_guidance,
            "height": sampler.height, "width": sampler.width, "scheduler": sampler.scheduler_id,
            "model": model.spec.base_identity, "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
        }

    def _reference_row(self, item: Any) -> ReferenceRow:
        """The reference sample an item attends to; items with equal rows share one reference row in a batch."""
        knobs = item.knobs
        private = item.key if knobs.full_attention_share else ""  # full sharing changes the reference: one each
        if knobs.reference_mode == "inversion":
            return ReferenceRow(item.row["reference_prompt"], item.row["inversion_key"], 0, private)
        seed = item.seed if knobs.reference_seed is None else knobs.reference_seed
        return ReferenceRow(item.row["reference_prompt"], "", seed, private)

    def at_step(self, engine: Any, items: Sequence[Any], on: Sequence[bool]) -> None:
        """Items outside their window share nothing for the coming step (attention and norms): the plain model."""
        import torch

        self.state(engine.model).sharing.step.switch(torch.tensor(on))

    def extra_rows(self, batch: int) -> int:
        """One reference row per reference in the batch: at most one per item (full sharing, or every item its own)."""
        return batch

    def run_batch(self, engine: Any, items: Sequence[Any]) -> list[Any]:
        """Reference rows first (one per reference the items use), then the items, in one pipeline call."""
        import torch

        from styleprobe.methods.reference_rows import ReferenceBatch
        from styleprobe.methods.style_aligned.shared_attention import SharingPlan

        state = self.state(engine.model)
        knobs, sampler = items[0].knobs, items[0].sampler
        batch = ReferenceBatch.of([self._reference_row(it) for it in items])
        n_refs = batch.n_refs
        layers = torch.zeros(batch.size, len(items[0].entry.layer_map), dtype=torch.bool)
        for j, it in enumerate(items):  # reference rows share nothing themselves (in full sharing they join their sample)
            layers[n_refs + j] = torch.tensor(it.pattern.scales) > 0
        plan = SharingPlan(
            ref_index=batch.ref_index(),
            layers=layers,
            share_norm=torch.tensor([False] * n_refs + [knobs.share_group_norm] * len(items)),
            adain_queries=knobs.adain_queries, adain_keys=knobs.adain_keys, adain_values=knobs.adain_values,
            score_scale=knobs.shared_score_scale, score_shift=knobs.shared_score_shift,
            full=knobs.full_attention_share,
        )
        plan.check_layers(len(state.sharing.layer_map))
        with state.sharing.use(plan):
            return batch.denoise(engine, sampler, [it.row["prompt_used"] for it in items], [it.seed for it in items],
                                 state.inversions, knobs.inversion_offset)
