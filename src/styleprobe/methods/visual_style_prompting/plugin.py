"""Visual Style Prompting (Jeong et al., ICCV 2025; naver-ai/Visual-Style-Prompting at 723dd4b, Apache-2.0) as a
styleprobe method, with StyleKeeper's negative visual query guidance (arXiv 2510.06827) as a knob.

A reference sample is denoised in the same batch as the images (a reference row per reference,
`methods/reference_rows.py`); in the self-attention (`attn1`) layers the layer pattern selects, during the steps
of its window, each image keeps its own queries and takes the reference's keys and values (`swap.py`).
Cross-attention is untouched. The defaults are the original's real-image recipe (vsp_real_script.py), because a
style set holds real images:
- `reference_mode: real`: the reference row is the style set's image, VAE-encoded stochastically and noised to
  every step's timestep (no inversion; `real_reference.py`), its noise prediction its conditional one alone
  (`reference_unguided`, the script's `use_prompt_as_null`);
- DDIM from the model's scheduler config (the script's `DDIMScheduler.from_config`), 50 steps, guidance 7, no
  guidance boost (the script passes `use_advanced_sampling=False`);
- colour calibration: the predicted x0 of every image AdaIN-ed to the reference row's for timesteps
  150 > t > 100 (`--color_cal_start_t 150 --color_cal_window_size 50`; `guidance.py`);
- prompts: the image's own prompt as given (`{prompt}`; the script's `tar_obj`) and, for the reference row, the
  manifest's content label (`{content}`) where the script captions the image with BLIP-2;
- site: experiments/method/visual_style_prompting.yaml says which patterns reproduce the original (`up_blocks.1`,
  its configs' `activate_layer_indices [[0,0],[128,140]]`); the layer probes move it like any method's.
`experiments/method/visual_style_prompting_generated.yaml` is the original's text-to-image recipe (vsp_script.py,
config/default.json): the reference generated from its own seed and prompt, the model's default scheduler, the
guidance boost of 20 for the first 3 steps, no colour calibration.

Negative visual query guidance (`nvqg_weight` > 0; off by default, as in VSP): StyleKeeper's repository lists this
version as to do, so no reference code exists; it is built from the paper's equations (see `guidance.py`,
`swap.py`): one more row per image, the query-swapped pass, whose score is subtracted.

Where this differs from the original on purpose:
- each image names its own reference, layers and window, so one call carries several references, prompts, seeds,
  patterns and windows, and an image does not depend on its batch-mates (the original: one reference at index 0);
- the real reference's random draws (posterior sample and noise per step) come from a generator seeded with
  `reference_seed`; the original draws them unseeded, and from one VAE encode per step where here the posterior is
  computed once (the same distribution, the same draws for a given generator);
- an empty negative prompt is the all-zero embedding (SDXL's `force_zeros_for_empty_prompt`) for every row; the
  original's text-to-image script encodes the empty string for its reference's negative when a style has none;
- the step counter of the original's processors (`inference_step`, reset at step 49) assumes 50 steps per call;
  here a window is fractions of any step count (`injection.windows`), the original's `activate_step_indices`
  [[0, 49]] being the full window;
- the reference prompt is a template over the manifest (no BLIP-2 captioner is loaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from styleprobe.errors import ConfigError
from styleprobe.methods.base import Method, MethodEntry, Parts, register
from styleprobe.methods.reference_rows import ReferenceRow, ReferenceRowMethod

if TYPE_CHECKING:  # torch is imported where it is used, so planning a sweep never waits for it
    import torch

MODES = ("real", "generated")
#: where the negative (query-swapped) pass takes the reference's queries: the encoder and middle blocks' attn1 layers
#: (StyleKeeper, as its replication reads the paper), every attn1 layer the pattern does not swap (the replication's
#: skipped decoder layers added), or the pattern's own layers
NVQG_LAYERS = ("down_mid", "complement", "pattern")
ARTEFACT = "noised_reference"
NUM_TRAIN_TIMESTEPS = 1000  # SDXL's (and the toy's and tiny's) scheduler configs


@dataclass(frozen=True)
class VisualStylePromptingKnobs:
    reference_mode: str = "real"  # real: the style set's image noised to each step; generated: made from its prompt
    reference_seed: int = 0  # real: the stochastic encoding's draws; generated: the reference's initial noise
    reference_unguided: bool = True  # the reference row's noise is its conditional prediction (use_prompt_as_null)
    boost_guidance: float = 20.0  # use_advanced_sampling: the guidance of the first `boost_steps` steps
    boost_steps: int = 0  # 0: no boost (the real-image script); the text-to-image configs: 3
    color_cal_start_t: int = 150  # colour calibration for timesteps start > t > start - window
    color_cal_window_size: int = 50  # 0: no calibration
    nvqg_weight: float = 0.0  # StyleKeeper's negative visual query guidance weight; 0: VSP (no extra pass)
    nvqg_layers: str = "down_mid"  # where the negative pass takes the reference's queries (NVQG_LAYERS)
    prompt_template: str = "{prompt}"
    reference_prompt_template: str = "{content}"  # the original captions a real image with BLIP-2


@dataclass
class VisualStylePromptingState:
    """VSP on one loaded pipeline: the shared attn1 state its plans go into, noised references in memory."""

    attention: Any
    trajectories: dict[str, tuple[torch.Tensor, dict[str, Any]]] = field(default_factory=dict)


def calibration_window(knobs: VisualStylePromptingKnobs) -> tuple[int, int] | None:
    """(start_t, end_t) of the colour calibration, or None when it is off."""
    if not knobs.color_cal_window_size:
        return None
    return knobs.color_cal_start_t, knobs.color_cal_start_t - knobs.color_cal_window_size


def leading_timesteps(steps: int, offset: int) -> list[int]:
    """DDIM's timesteps with SDXL's "leading" spacing: what the model presets' scheduler configs give."""
    ratio = NUM_TRAIN_TIMESTEPS // steps
    return [i * ratio + offset for i in reversed(range(steps))]


@register
class VisualStylePrompting(ReferenceRowMethod, Method):
    """Self-attention key/value swap with a reference row in the batch (real image noised per step by default)."""

    name: ClassVar[str] = "visual_style_prompting"
    pattern_site: ClassVar[str] = "attn1"
    window_support: ClassVar[str] = "per_sample"  # the swap is switched per sample, per step
    Knobs: ClassVar[type] = VisualStylePromptingKnobs
    #: the script's DDIMScheduler.from_config(SDXL's config); SDXL's config holds clip_sample and set_alpha_to_one false,
    #: which configs without them (the toy's, the tiny's) would take from DDIM's own defaults (true: x0 clipped to
    #: [-1, 1], which wrecks latents that range wider), so they are given here
    sampler_defaults: ClassVar[dict[str, Any]] = {
        "steps": 50, "guidance": 7.0, "scheduler": "DDIMScheduler",
        "scheduler_options": {"clip_sample": False, "set_alpha_to_one": False},
    }

    # planning ------------------------------------------------------------------------------------------
    def check_knobs(self, knobs: VisualStylePromptingKnobs, where: str) -> None:
        from styleprobe.config import non_negative_number

        if knobs.reference_mode not in MODES:
            raise ConfigError(f"{where}.reference_mode={knobs.reference_mode!r}; choose one of {', '.join(MODES)}")
        if knobs.reference_seed < 0:
            raise ConfigError(f"{where}.reference_seed={knobs.reference_seed}; give a non-negative seed")
        non_negative_number(knobs.boost_guidance, f"{where}.boost_guidance")
        if not 0 <= knobs.nvqg_weight <= 1:
            raise ConfigError(f"{where}.nvqg_weight={knobs.nvqg_weight}; give a share between 0 (VSP) and 1 (the "
                              f"unconditional score taken from the query-swapped pass alone)")
        if knobs.boost_steps < 0:
            raise ConfigError(f"{where}.boost_steps={knobs.boost_steps}; give 0 (no boost) or a number of steps")
        if knobs.color_cal_window_size < 0 or not 0 < knobs.color_cal_start_t <= NUM_TRAIN_TIMESTEPS:
            raise ConfigError(f"{where}: color_cal_start_t={knobs.color_cal_start_t} must lie in (0, "
                              f"{NUM_TRAIN_TIMESTEPS}] and color_cal_window_size={knobs.color_cal_window_size} be >= 0 "
                              f"(0: no colour calibration)")
        if knobs.color_cal_window_size > knobs.color_cal_start_t:
            raise ConfigError(f"{where}: the colour calibration window ({knobs.color_cal_start_t} - "
                              f"{knobs.color_cal_window_size}) reaches below timestep 0; give "
                              f"color_cal_window_size <= color_cal_start_t")
        if knobs.nvqg_layers not in NVQG_LAYERS:
            raise ConfigError(f"{where}.nvqg_layers={knobs.nvqg_layers!r}; choose one of {', '.join(NVQG_LAYERS)}")
        self.check_templates(knobs, where)

    def check_model(self, spec: Any, where: str) -> None:
        if spec.family != "sdxl":
            raise ConfigError(f"{where}: Visual Style Prompting runs on SDXL-family models (the original is an SDXL "
                              f"pipeline and its layers are SDXL's); model {spec.name} is {spec.family}")

    def check_entry(self, entry: MethodEntry, spec: Any) -> None:
        where = f"method.{entry.name}"
        sampler = entry.sampler
        for knobs in entry.variants:
            window = calibration_window(knobs)
            if window is not None:
                if sampler.scheduler != "DDIMScheduler":
                    raise ConfigError(
                        f"{where}: colour calibration changes DDIM's predicted x0, so it needs DDIMScheduler, not "
                        f"{sampler.scheduler_id}; set {where}.sampler.scheduler=DDIMScheduler or "
                        f"{where}.color_cal_window_size=0")
                offset = int(dict(sampler.scheduler_options).get("steps_offset", 1))
                hit = [t for t in leading_timesteps(sampler.steps, offset) if window[0] > t > window[1]]
                if not hit:
                    raise ConfigError(
                        f"{where}: no step of the {sampler.steps}-step trajectory has a timestep in the colour "
                        f"calibration window {window[0]} > t > {window[1]}; widen color_cal_window_size, move "
                        f"color_cal_start_t, or set color_cal_window_size=0")
            if knobs.boost_steps > sampler.steps:
                raise ConfigError(f"{where}.boost_steps={knobs.boost_steps} is more than the sampler's "
                                  f"{sampler.steps} steps")
            if (knobs.boost_steps or knobs.nvqg_weight) and not sampler.guided:
                raise ConfigError(f"{where}: the guidance boost and negative visual query guidance act on "
                                  f"classifier-free guidance, which is off at guidance {sampler.guidance:g}; "
                                  f"set {where}.sampler.guidance above 1")
        self.check_switch_patterns(entry, "Visual Style Prompting swaps")

    def effective_window(self, pattern: Any, knobs: VisualStylePromptingKnobs, window: Any) -> Any:
        """A `none` pattern swaps no layer, but the negative pass of NVQG still takes queries outside the pattern
        (nvqg_layers down_mid / complement), in the item's window: its window matters then."""
        if knobs.nvqg_weight and knobs.nvqg_layers != "pattern":
            return window
        return super().effective_window(pattern, knobs, window)

    def content_label_use(self, knobs: VisualStylePromptingKnobs) -> str:
        if "{content}" not in knobs.reference_prompt_template:
            return ""
        return f"the reference row's prompt ({knobs.reference_prompt_template!r})"

    def trajectory_key(self, parts: Parts) -> str:
        """What determines a real reference's noised trajectory; empty in generated mode."""
        from styleprobe.run.plan import item_key

        knobs, sampler = parts.knobs, parts.sampler
        if knobs.reference_mode != "real":
            return ""
        return item_key({
            "kind": "vsp_noised_reference", "model": parts.spec.base_identity, "dtype": parts.dtype,
            "reference": parts.reference.digest, "steps": sampler.steps, "height": sampler.height,
            "width": sampler.width, "scheduler": sampler.scheduler_id, "seed": knobs.reference_seed,
        })

    # generation ----------------------------------------------------------------------------------------
    def state(self, model: Any) -> VisualStylePromptingState:
        from styleprobe.methods.attention import install_self_attention

        if self.name not in model.attached:
            model.attached[self.name] = VisualStylePromptingState(install_self_attention(model.pipe.unet))
        return model.attached[self.name]

    def activate(self, model: Any) -> None:
        from styleprobe.methods.attention import install_self_attention

        install_self_attention(model.pipe.unet)  # idempotent; puts ours back if another method reset the processors
        self.state(model)

    def deactivate(self, model: Any) -> None:
        """Nothing to undo: with no swap plan in use, the processors compute the plain model."""

    def prepare(self, engine: Any, items: Sequence[Any], store: Any) -> list[dict[str, Any]]:
        """Noise each real reference the items use to every step, unless the results folder already holds it."""
        from styleprobe.methods.reference_rows import prepare_trajectories

        return prepare_trajectories(engine, items, store, self.state(engine.model).trajectories,
                                    key_of=lambda it: it.row["trajectory_key"], make=self._noise_reference,
                                    artefact=ARTEFACT, what="noised reference", label=f"{self.name}: encode references")

    @staticmethod
    def _noise_reference(model: Any, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        from styleprobe.methods.visual_style_prompting.real_reference import noised_trajectory

        sampler, knobs = item.sampler, item.knobs
        zts, seconds = noised_trajectory(model.pipe, item.reference.load(), sampler.steps, sampler.height,
                                         sampler.width, knobs.reference_seed)
        return zts.to(model.dtype), {
            "seconds": seconds, "reference_digest": item.reference.digest, "style": item.reference.style,
            "steps": sampler.steps, "height": sampler.height, "width": sampler.width,
            "scheduler": sampler.scheduler_id, "seed": knobs.reference_seed, "model": model.spec.base_identity,
            "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
        }

    def _reference_row(self, item: Any) -> ReferenceRow:
        """The reference row an item swaps with; items with equal rows share one in a batch."""
        knobs = item.knobs
        if knobs.reference_mode == "real":
            return ReferenceRow(item.row["reference_prompt"], item.row["trajectory_key"], 0, "")
        return ReferenceRow(item.row["reference_prompt"], "", knobs.reference_seed, "")

    def at_step(self, engine: Any, items: Sequence[Any], on: Sequence[bool]) -> None:
        """Items outside their window (and their negative rows) swap nothing for the coming step."""
        import torch

        self.state(engine.model).attention.step.switch(torch.tensor(on))

    @staticmethod
    def _negative_layers(knobs: VisualStylePromptingKnobs, layer_map: Any, item_layers: torch.Tensor) -> torch.Tensor:
        """(items, layers) bool: where each item's negative row takes its reference's queries."""
        import torch

        if knobs.nvqg_layers == "pattern":
            return item_layers.clone()
        if knobs.nvqg_layers == "complement":
            return ~item_layers
        encoder = torch.tensor([layer.block.startswith(("down_blocks", "mid_block")) for layer in layer_map.layers])
        return encoder.expand_as(item_layers).clone()

    def pipeline_rows(self, items: Sequence[Any]) -> int:
        return super().pipeline_rows(items) + (len(items) if items[0].knobs.nvqg_weight else 0)

    def extra_rows(self, batch: int) -> int:
        """At most one reference row per item, and one negative row per item with negative visual query guidance."""
        return 2 * batch

    def run_batch(self, engine: Any, items: Sequence[Any]) -> list[Any]:
        """Reference rows, the items, then (NVQG) a negative row per item, in one pipeline call."""
        import torch

        from styleprobe.methods.reference_rows import ReferenceBatch
        from styleprobe.methods.visual_style_prompting.guidance import StepRules, applied
        from styleprobe.methods.visual_style_prompting.swap import SwapPlan

        state = self.state(engine.model)
        knobs, sampler = items[0].knobs, items[0].sampler
        batch = ReferenceBatch.of([self._reference_row(it) for it in items])
        n_refs, n_items = batch.n_refs, len(items)
        n_neg = n_items if knobs.nvqg_weight else 0
        size = batch.size + n_neg
        n_layers = len(state.attention.layer_map)
        layers = torch.zeros(size, n_layers, dtype=torch.bool)
        for j, it in enumerate(items):
            layers[n_refs + j] = torch.tensor(it.pattern.scales) > 0
        ref_index = torch.cat([batch.ref_index(), batch.ref_index()[n_refs:][:n_neg]])
        query_swap = torch.zeros(size, dtype=torch.bool)
        item_of = torch.full((size,), -1, dtype=torch.long)
        negative_of = torch.full((size,), -1, dtype=torch.long)
        if n_neg:
            layers[batch.size:] = self._negative_layers(knobs, state.attention.layer_map, layers[n_refs:batch.size])
            query_swap[batch.size:] = True
            item_of[batch.size:] = torch.arange(n_items)
            negative_of[n_refs:batch.size] = torch.arange(batch.size, size)
        plan = SwapPlan(ref_index=ref_index, layers=layers, query_swap=query_swap, item_of=item_of)
        plan.check_layers(n_layers)
        unguided = torch.zeros(size, dtype=torch.bool)
        if knobs.reference_unguided:
            unguided[:n_refs] = True
        rules = StepRules(guidance=sampler.guidance, ref_index=ref_index, unguided=unguided,
                          boost=knobs.boost_guidance, boost_steps=knobs.boost_steps, negative_of=negative_of,
                          nvqg_weight=knobs.nvqg_weight, calibrate=calibration_window(knobs))
        prompts = [it.row["prompt_used"] for it in items]
        latents = batch.latents(engine, sampler, [it.seed for it in items], state.trajectories, 0)
        if n_neg:
            latents = torch.cat([latents, latents[n_refs:]])
        replay = batch.replay_callback(state.trajectories, 0)

        def follow_images(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            """The reference rows back on their trajectories; each negative row its image's latent again."""
            out = replay(pipe, step, timestep, kwargs)["latents"] if replay else kwargs["latents"]
            out[batch.size:] = out[n_refs:batch.size]
            return {"latents": out}

        with state.attention.use(plan), applied(engine.model.pipe, rules):
            images = engine.denoise(sampler, [r.caption for r in batch.refs] + prompts + prompts[:n_neg], latents,
                                    callback_on_step_end=follow_images if n_neg else replay)
        return images[n_refs:batch.size]
