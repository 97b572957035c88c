"""B-LoRA (Frenkel et al., arXiv 2403.14572; yardenfren1996/B-LoRA) as a styleprobe method.

One LoRA is trained per style reference (DreamBooth on that one image, `training.py`), on the projections of
every attention in `up_blocks.0.attentions.0` (content) and `up_blocks.0.attentions.1` (style) jointly; the image
is then made with only the style module's part of it, prompted "<prompt> in [v] style". The defaults are the
original's recipe (its README command: rank 64 with alpha = rank and gaussian init, AdamW at 5e-5 constant, 1000
steps, batch 1, instance prompt "A [v]", seed 0, text encoders frozen). Each training knob is a config knob;
`train_seed` is a sweep axis that analysis treats as a replicate of the unit, not as a condition (users report
that about 8 of 10 training seeds work).

Trained LoRAs are artefacts of the results folder (`artefacts/b_lora/<key[:2]>/<key>/`), in diffusers' format
(`pytorch_lora_weights.safetensors`, loadable by `load_lora_weights`) with `training.json` (seconds, steps,
losses, precision, gradient norms). Their key hashes the base model, the dtype, the reference image and every
training knob (`mixed_precision` as resolved, and only where it changes the weights: see `training.py`), so a
rerun trains nothing twice; a killed training resumes from `checkpoint.pt` (every `checkpoint_every` steps). A LoRA
trained elsewhere (the original's scripts, the Hub) is named per reference in the style set's manifest, column
`b_lora`, and used as it is (its UNet weights: text-encoder weights in such a file are left out, with a log line).

Layer patterns select transformer layers (the map of `attn1` names them; a layer's LoRA covers both its
attentions): `style` is B-LoRA's style-only inference, `all` is the whole trained LoRA (content and style of the
reference), one-hot and leave-one-out patterns probe which module of a LoRA trained on `train_modules=all`
carries the style. Layers outside `train_modules` have no LoRA weights, so a pattern's `layers` column lists only
the layers it really switches on. Scales are per transformer layer through peft (`LoraLayer.set_scale`); a
pipeline call applies one LoRA with one pattern, so items are batched per (LoRA, pattern, scales): peft scales
an adapter for the whole batch, not per sample.

Strength: `alpha_mode=original` multiplies every LoRA tensor by `alpha` as the original's `scale_lora` does, so
the weight update scales by alpha squared; `alpha_mode=linear` scales the update by `alpha`, as diffusers'
`set_adapters` weights do. Rows record both knobs and the resulting `update_scale`.

Content and style from two references, as the original's `inference.py --content_B_LoRA ... --style_B_LoRA`:
`content_reference` names a reference of the style set (its `style` value, or `self`) whose LoRA joins on
`content_modules` at `content_alpha`; the prompt is then typically "A [v] in [v] style" (`prompt_template`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from styleprobe.errors import ConfigError
from styleprobe.methods.base import Method, MethodEntry, Parts, register
from styleprobe.methods.prompt_templates import check_template, fill
from styleprobe.models.layers import LayerMap, Pattern

log = logging.getLogger("styleprobe")

ARTEFACT = "b_lora"
ALPHA_MODES = ("original", "linear")


@dataclass(frozen=True)
class BLoRAKnobs:
    # training: what determines the trained LoRA (the original's recipe) -------------------------------------
    train_modules: str = "b_lora"  # b_lora (content + style module) | all | content | style | names joined by +
    train_targets: str = "to_q,to_k,to_v,to_out.0"  # projections of attn1 and attn2 in those modules
    rank: int = 64
    lora_alpha: float | None = None  # null: = rank (the original's scale 1)
    init: str = "gaussian"  # gaussian (B-LoRA's) | default (peft's kaiming A, zero B)
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    train_steps: int = 1000
    train_batch_size: int = 1
    optimizer: str = "adamw"  # adamw | adamw_8bit (the original's --use_8bit_adam; needs bitsandbytes and a GPU)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None  # min-SNR loss weighting (null: plain MSE, as the original's command)
    train_resolution: int | None = None  # null: the sampler's height (which must equal its width)
    center_crop: bool = True
    instance_prompt: str = "A [v]"
    train_seed: int = 0  # a replicate: analysis resamples it with the unit, never compares seeds as conditions
    mixed_precision: str = "auto"  # auto (the model dtype's: fp16 with loss scaling on float16) | no | fp16 | bf16
    checkpoint_every: int = 500  # not keyed: the weights do not depend on it
    gradient_checkpointing: bool = True  # not keyed: memory for time, same weights
    # inference --------------------------------------------------------------------------------------------
    alpha: float = 1.0  # strength of the LoRA on the pattern's layers
    alpha_mode: str = "original"  # original: tensors x alpha (update x alpha^2) | linear: update x alpha
    content_reference: str | None = None  # a reference (its style name, or self) whose LoRA adds the content
    content_alpha: float = 1.0
    content_modules: str = "content"  # where the content reference's LoRA applies
    prompt_template: str = "{prompt} in [v] style"


_NAMES = [f.name for f in dataclasses.fields(BLoRAKnobs)]
#: The knobs that determine the trained LoRA (those before `alpha`): keyed through the LoRA's own key.
TRAINING = frozenset(_NAMES[: _NAMES.index("alpha")])


@dataclass(frozen=True)
class LoRASource:
    """Where one LoRA comes from: trained here (`recipe` set), a local file, or a Hub repository."""

    key: str
    kind: str  # trained | file | hub
    reference: Any  # the StyleReference it belongs to
    location: str = ""  # file path or Hub id ("owner/name" or "owner/name/weight_name")
    recipe: Any = None  # lora_training.Recipe for trained LoRAs
    checkpoint_every: int = 500
    gradient_checkpointing: bool = True

    @property
    def hub_parts(self) -> tuple[str, str | None]:
        """A Hub LoRA's repository ("owner/name") and its weight file's name (None: diffusers' default names)."""
        owner, repo, *weight = self.location.split("/", 2)
        return f"{owner}/{repo}", (weight[0] if weight else None)


@dataclass
class BLoRAState:
    """B-LoRA on one loaded pipeline: which LoRAs are loaded as adapters, and each one's training record."""

    loaded: dict[str, str] = field(default_factory=dict)  # lora key -> adapter name
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # lora key -> training.json (trained ones)
    files: dict[str, Path] = field(default_factory=dict)  # lora key -> its weights file (trained ones)


def update_scale(alpha: float, mode: str) -> float:
    """The factor on a LoRA's weight update: alpha squared when both factors are scaled (the original), else alpha."""
    return alpha * alpha if mode == "original" else alpha


@register
class BLoRA(Method):
    """A LoRA trained on the reference image, applied on the layers a pattern selects (style module: B-LoRA)."""

    name: ClassVar[str] = "b_lora"
    pattern_site: ClassVar[str] = "attn1"  # rows name a transformer layer by its attn1 module, as since B-LoRA's start
    acts_on: ClassVar[tuple[str, ...]] = ("attn1", "attn2")  # a layer's LoRA covers both of its attention sites
    window_support: ClassVar[str] = "per_batch"  # peft scales a layer for the whole call: one window per batch
    Knobs: ClassVar[type] = BLoRAKnobs
    unkeyed: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "gradient_checkpointing"})
    replicate_knobs: ClassVar[frozenset[str]] = frozenset({"train_seed"})

    def __init__(self) -> None:
        self._sources: dict[tuple[Any, ...], LoRASource] = {}  # planning cache
        self._by_key: dict[str, LoRASource] = {}  # every LoRA this plug-in planned, by key

    # planning ------------------------------------------------------------------------------------------
    def check_knobs(self, knobs: BLoRAKnobs, where: str) -> None:
        from styleprobe.config import non_negative_number
        from styleprobe.methods.b_lora.lora import parse_projections
        from styleprobe.methods.b_lora.training import INITS, LR_SCHEDULES, MIXED_PRECISIONS, OPTIMIZERS

        for name in ("rank", "train_steps", "train_batch_size", "checkpoint_every"):
            if getattr(knobs, name) < 1:
                raise ConfigError(f"{where}.{name}={getattr(knobs, name)}; give a positive integer")
        for name in ("learning_rate", "adam_epsilon"):
            if not getattr(knobs, name) > 0:
                raise ConfigError(f"{where}.{name}={getattr(knobs, name)}; give a positive number")
        for name in ("lora_alpha", "snr_gamma", "train_resolution"):
            value = getattr(knobs, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{where}.{name}={value}; give a positive number or null")
        for name in ("alpha", "content_alpha", "adam_weight_decay", "max_grad_norm", "lr_warmup_steps", "train_seed"):
            non_negative_number(getattr(knobs, name), f"{where}.{name}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(knobs, name) < 1:
                raise ConfigError(f"{where}.{name}={getattr(knobs, name)}; give a number in [0, 1)")
        for name, value, choices in (("alpha_mode", knobs.alpha_mode, ALPHA_MODES), ("optimizer", knobs.optimizer, OPTIMIZERS),
                                     ("lr_scheduler", knobs.lr_scheduler, LR_SCHEDULES), ("init", knobs.init, INITS),
                                     ("mixed_precision", knobs.mixed_precision, MIXED_PRECISIONS)):
            if value not in choices:
                raise ConfigError(f"{where}.{name}={value!r}; choose one of {', '.join(choices)}")
        if knobs.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"{where}.optimizer=adamw_8bit needs bitsandbytes (pip install bitsandbytes, on a GPU); "
                              f"or use optimizer=adamw")
        parse_projections(knobs.train_targets, f"{where}.train_targets")
        check_template(knobs.prompt_template, f"{where}.prompt_template")

    def check_model(self, spec: Any, where: str) -> None:
        if spec.family != "sdxl":
            raise ConfigError(f"{where}: B-LoRA trains on SDXL-family models (SDXL's added size conditions); "
                              f"model {spec.name} is {spec.family}")

    def check_entry(self, entry: MethodEntry, spec: Any) -> None:
        from styleprobe.methods.b_lora.lora import parse_modules

        where = f"method.{entry.name}"
        for knobs in entry.variants:
            parse_modules(knobs.train_modules, entry.layer_map, f"{where}.train_modules")
            parse_modules(knobs.content_modules, entry.layer_map, f"{where}.content_modules")
            if knobs.train_resolution is None and entry.sampler.height != entry.sampler.width:
                raise ConfigError(f"{where}: the sampler makes {entry.sampler.height}x{entry.sampler.width} images, but a "
                                  f"B-LoRA trains on a square; set {where}.train_resolution")

    def content_label_use(self, knobs: BLoRAKnobs) -> str:
        return f"the prompt template {knobs.prompt_template!r}" if "{content}" in knobs.prompt_template else ""

    def effective_pattern(self, pattern: Pattern, knobs: BLoRAKnobs, layer_map: LayerMap) -> Pattern:
        from styleprobe.methods.b_lora.lora import parse_modules

        covered = layer_map.mask(parse_modules(knobs.train_modules, layer_map, "train_modules"))
        return Pattern(pattern.name, tuple(s if c else 0.0 for s, c in zip(pattern.scales, covered)), pattern.sweep,
                       pattern.target)

    def prompt_used(self, parts: Parts) -> str:
        return fill(parts.knobs.prompt_template, parts)

    def source(self, parts: Parts, reference: Any) -> LoRASource:
        """The LoRA of `reference` for these knobs (its manifest file, else one trained here), with its key."""
        from styleprobe.methods.b_lora.lora import lora_file

        cache_key = (reference.digest, reference.b_lora, parts.knobs, json.dumps(parts.spec.base_identity, sort_keys=True),
                     parts.dtype, parts.sampler.height, parts.layer_map.names if parts.layer_map else None)
        if cache_key in self._sources:
            return self._sources[cache_key]
        from styleprobe.run.plan import item_key

        if reference.b_lora.startswith("hub:"):
            location = reference.b_lora.removeprefix("hub:")
            src = LoRASource(item_key({"kind": "b_lora_hub", "id": location}), "hub", reference, location)
        elif reference.b_lora:
            path = lora_file(reference.b_lora)
            what = f"the B-LoRA {path} named for {reference.image.name} in the style set's manifest"
            if not path.is_file():
                raise ConfigError(f"{what} does not exist; fix the manifest's b_lora column (a .safetensors file or a "
                                  f"folder holding pytorch_lora_weights.safetensors)")
            if parts.layer_map is not None:
                _check_file(path, parts.layer_map, what)
            from styleprobe.disk import file_digest

            src = LoRASource(item_key({"kind": "b_lora_file", "digest": file_digest(path)}), "file", reference, str(path))
        else:
            from styleprobe.methods.b_lora.training import recipe_identity

            recipe = self.recipe(parts)
            src = LoRASource(item_key({"kind": "b_lora", "model": parts.spec.base_identity, "dtype": parts.dtype,
                                       "reference": reference.digest, "recipe": recipe_identity(recipe, parts.dtype)}),
                             "trained", reference, "", recipe, parts.knobs.checkpoint_every,
                             parts.knobs.gradient_checkpointing)
        self._sources[cache_key] = src
        self._by_key[src.key] = src
        return src

    def recipe(self, parts: Parts) -> Any:
        """The training recipe of these knobs on this model (targets named from the layer map)."""
        from styleprobe.methods.b_lora.lora import parse_modules, parse_projections, target_modules
        from styleprobe.methods.b_lora.training import Recipe, resolve_mixed_precision

        k, layer_map = parts.knobs, parts.layer_map
        modules = parse_modules(k.train_modules, layer_map, "train_modules")
        return Recipe(
            targets=tuple(target_modules(modules, parse_projections(k.train_targets, "train_targets"), layer_map,
                                         self.acts_on)),
            rank=k.rank, lora_alpha=float(k.lora_alpha if k.lora_alpha is not None else k.rank), init=k.init,
            learning_rate=k.learning_rate, lr_scheduler=k.lr_scheduler, lr_warmup_steps=k.lr_warmup_steps,
            steps=k.train_steps, batch_size=k.train_batch_size, optimizer=k.optimizer, adam_beta1=k.adam_beta1,
            adam_beta2=k.adam_beta2, adam_weight_decay=k.adam_weight_decay, adam_epsilon=k.adam_epsilon,
            max_grad_norm=k.max_grad_norm, snr_gamma=k.snr_gamma,
            resolution=k.train_resolution or parts.sampler.height, center_crop=k.center_crop,
            instance_prompt=k.instance_prompt, seed=k.train_seed,
            mixed_precision=resolve_mixed_precision(k.mixed_precision, parts.dtype, "method.b_lora.mixed_precision"),
        )

    def content_source(self, parts: Parts) -> LoRASource | None:
        name = parts.knobs.content_reference
        if name is None:
            return None
        if name == "self":
            return self.source(parts, parts.reference)
        found = [r for r in parts.style_set if r.style == name]
        if not found:
            styles = ", ".join(sorted({r.style for r in parts.style_set}))
            raise ConfigError(f"content_reference={name!r} is not a style of the style set; choose self or one of: {styles}")
        return self.source(parts, found[0])

    def key_fields(self, parts: Parts) -> dict[str, Any]:
        knobs = {k: v for k, v in super().key_fields(parts).items() if k not in TRAINING}
        content = self.content_source(parts)
        return {**knobs, "lora": self.source(parts, parts.reference).key, "content_lora": content.key if content else "",
                "prompt_used": self.prompt_used(parts)}

    def row_fields(self, parts: Parts) -> dict[str, Any]:
        src, content = self.source(parts, parts.reference), self.content_source(parts)
        return {**super().row_fields(parts), "lora_key": src.key, "lora_source": src.kind,
                "content_lora_key": content.key if content else "",
                "update_scale": update_scale(parts.knobs.alpha, parts.knobs.alpha_mode)}

    def prepare_keys(self, parts: Parts) -> list[str]:
        """The LoRAs this item trains (its own first: a shard takes the item with it); none for LoRAs given ready."""
        sources = [self.source(parts, parts.reference), self.content_source(parts)]
        return [s.key for s in sources if s is not None and s.kind == "trained"]

    def needed_files(self, spec: Any, items: Sequence[Any]) -> list[Any]:
        """The LoRAs given ready (the manifest's files and Hub repositories); trained ones are made by the job."""
        from styleprobe.models.files import ModelFile

        files = []
        for key in dict.fromkeys(k for it in items for k in (it.row["lora_key"], it.row["content_lora_key"]) if k):
            src = self._by_key[key]
            what = f"the B-LoRA of {src.reference.image.name}"
            if src.kind == "file":
                files.append(ModelFile(what, src.location, (), "the style set's b_lora column"))
            elif src.kind == "hub":
                repo, weight = src.hub_parts
                names = (weight,) if weight else ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
                files.append(ModelFile(what, repo, names, "the style set's b_lora column"))
        return files

    def batch_key(self, item: Any) -> tuple[Any, ...]:
        k = item.knobs
        return (item.row["lora_key"], item.row["content_lora_key"], item.pattern.scales, k.alpha, k.alpha_mode,
                k.content_alpha, k.content_modules)

    # generation ----------------------------------------------------------------------------------------
    def state(self, model: Any) -> BLoRAState:
        if self.name not in model.attached:
            model.attached[self.name] = BLoRAState()
        return model.attached[self.name]

    def activate(self, model: Any) -> None:
        state = self.state(model)
        if state.loaded:
            model.pipe.unet.enable_adapters()

    def deactivate(self, model: Any) -> None:
        """Switch the loaded LoRAs off (peft's `disable_adapters`): the base model, nothing unloaded."""
        state = model.attached.get(self.name)
        if state is not None and state.loaded:
            model.pipe.unet.disable_adapters()

    def prepare(self, engine: Any, items: Sequence[Any], store: Any) -> list[dict[str, Any]]:
        """Train every LoRA these items use that the results folder lacks; one record per trained LoRA used."""
        from styleprobe.methods.b_lora.lora import WEIGHT_NAME
        from styleprobe.progress import Progress

        state = self.state(engine.model)
        needed = list(dict.fromkeys(k for it in items for k in (it.row["lora_key"], it.row["content_lora_key"]) if k))
        trained = [self._by_key[k] for k in needed if self._by_key[k].kind == "trained"]
        records = []
        with Progress(len(trained), f"{self.name}: train LoRAs", "LoRA") as bar:
            for n, src in enumerate(trained, start=1):
                record = self._ensure_trained(engine.model, store, src, n, len(trained))
                state.records[src.key] = record
                state.files[src.key] = store.artefact_dir(ARTEFACT, src.key) / WEIGHT_NAME
                records.append({"what": "b_lora training", "key": src.key, "style": record["style"],
                                "train_seed": src.recipe.seed, "seconds": record["seconds"], "steps": record["steps"],
                                "seconds_per_step": record["seconds_per_step"], "final_loss": record["final_loss_mean"],
                                "peak_gpu_bytes": record.get("peak_gpu_bytes"), "reused": record["reused"]})
                bar.update()
        return records

    def _ensure_trained(self, model: Any, store: Any, src: LoRASource, n: int, total: int) -> dict[str, Any]:
        """Train (or resume, or find) one LoRA; its training record."""
        from styleprobe.disk import atomic_write
        from styleprobe.methods.b_lora.lora import WEIGHT_NAME
        from styleprobe.models.devices import peak_memory, reset_peak_memory

        folder = store.artefact_dir(ARTEFACT, src.key)
        weights, record_path = folder / WEIGHT_NAME, folder / "training.json"
        if weights.is_file() and record_path.is_file():
            return {**json.loads(record_path.read_text()), "reused": True}
        reset_peak_memory(model.device)
        trained = self._train(model, src, folder / "checkpoint.pt", n, total)
        record = {
            "lora_key": src.key, "reference_digest": src.reference.digest, "style": src.reference.style,
            "model": model.spec.base_identity, "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
            "recipe": {**dataclasses.asdict(src.recipe), "targets": len(src.recipe.targets)},
            "seconds": round(trained.seconds, 3), "steps": trained.steps, "resumed_from": trained.resumed_from,
            "seconds_per_step": round(trained.seconds / max(1, trained.steps - trained.resumed_from), 5),
            "final_loss": trained.final_loss, "final_loss_mean": trained.final_loss_mean, "losses": trained.losses,
            "mixed_precision": src.recipe.mixed_precision, "loss_scale": trained.loss_scale,
            "skipped_steps": trained.skipped_steps, "grad_norms": trained.grad_norms,
            "peak_gpu_bytes": peak_memory(model.device),
        }
        save_lora(weights, trained.state_dict, trained.config)
        atomic_write(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        log.info("B-LoRA %d/%d (%s, seed %d): %d steps in %.1f s, final loss %.4f -> %s", n, total, src.reference.style,
                 src.recipe.seed, trained.steps, trained.seconds, trained.final_loss_mean, folder)
        return {**record, "reused": False}

    @staticmethod
    def _train(model: Any, src: LoRASource, checkpoint: Path, n: int, total: int) -> Any:
        from styleprobe.disk import atomic_write
        from styleprobe.methods.b_lora.training import train
        from styleprobe.progress import Progress

        def save(path: Path, state: dict[str, Any]) -> None:
            import torch

            atomic_write(path, lambda tmp: torch.save(state, tmp))

        recipe = src.recipe
        bar = Progress(recipe.steps, f"B-LoRA {n}/{total} {src.reference.style}", "step", leave=False)

        def progress(step: int, steps: int, loss: float) -> None:
            bar.update_to(step, loss=f"{loss:.4f}")

        try:
            return train(model.pipe, src.reference.load(), recipe, adapter=f"train_{src.key}",
                         noise_schedule=model.default_scheduler.config, checkpoint=checkpoint,
                         checkpoint_every=src.checkpoint_every, gradient_checkpointing=src.gradient_checkpointing,
                         save_checkpoint=save, progress=progress)
        finally:
            bar.close()

    def _load(self, model: Any, keys: Sequence[str]) -> dict[str, str]:
        """Adapter names of these LoRAs, loading missing ones and unloading others (one LoRA set in memory at a time).

        Only UNet weights are loaded: a file's text-encoder weights are left out (B-LoRA trains and applies UNet
        blocks only; the original's inference keeps the `unet.` keys of the chosen blocks, and the text encoders
        are shared with every other method).
        """
        from styleprobe.methods.b_lora.lora import load_unet_lora
        from styleprobe.models.sources import unavailable

        state, unet = self.state(model), model.pipe.unet
        stale = [k for k in state.loaded if k not in keys]
        if stale:
            unet.delete_adapters([state.loaded.pop(k) for k in stale])
        for key in keys:
            if key in state.loaded:
                continue
            src, name = self._by_key[key], f"b_lora_{key}"
            source, options, what = str(state.files.get(key, src.location)), {}, f"the B-LoRA {src.location or key}"
            if src.kind == "hub":
                source, weight = src.hub_parts
                options, what = ({"weight_name": weight} if weight else {}), f"{what} on the Hub"
            try:
                load_unet_lora(model.pipe, source, name, what, "B-LoRA trains UNet blocks only; the text encoders stay "
                               "the base model's for every method", **options)
            except OSError as err:
                raise unavailable(f"the B-LoRA of {src.reference.image.name}", src.location, None, err) from err
            state.loaded[key] = name
        return {k: state.loaded[k] for k in keys}

    def layer_scales(self, model: Any, item: Any, on: bool = True) -> dict[str, dict[str, float]]:
        """Adapter name -> transformer layer -> factor on its update, for an item (its LoRAs loaded first).

        The reference's LoRA gets the pattern's scale times alpha on each layer the pattern switches on (none while
        `on` is false: a step outside the item's window, where the item is its `none`); a content LoRA gets
        content_alpha on `content_modules`; in `original` mode each factor is squared (see `update_scale`).
        """
        from styleprobe.methods.b_lora.lora import layer_indices, parse_modules

        knobs, layer_map = item.knobs, item.entry.layer_map
        style_key, content_key = item.row["lora_key"], item.row["content_lora_key"]
        adapters = self._load(model, [k for k in (style_key, content_key) if k])
        scales: dict[str, dict[str, float]] = {name: {} for name in adapters.values()}
        if content_key:
            for i in layer_indices(parse_modules(knobs.content_modules, layer_map, "content_modules"), layer_map):
                scales[adapters[content_key]][layer_map.layers[i].short] = update_scale(knobs.content_alpha, knobs.alpha_mode)
        for i, s in enumerate(item.pattern.scales):
            if s and on:
                scales[adapters[style_key]][layer_map.layers[i].short] = update_scale(s * knobs.alpha, knobs.alpha_mode)
        return scales

    def at_step(self, engine: Any, items: Sequence[Any], on: Sequence[bool]) -> None:
        """The batch's one window: the pattern's layer scales inside it, its `none` (content LoRA only) outside."""
        from styleprobe.methods.b_lora.lora import set_layer_scales

        set_layer_scales(engine.model.pipe.unet, self.layer_scales(engine.model, items[0], bool(on[0])))

    def run_batch(self, engine: Any, items: Sequence[Any]) -> list[Any]:
        """One LoRA (and optionally a content LoRA) with one pattern and one window for the whole batch."""
        from styleprobe.methods.b_lora.lora import set_layer_scales

        model, first = engine.model, items[0]
        set_layer_scales(model.pipe.unet, self.layer_scales(model, first))
        record = self.state(model).records.get(first.row["lora_key"], {})
        for it in items:
            it.row.update({"lora_train_seconds": record.get("seconds"), "lora_train_steps": record.get("steps"),
                           "lora_final_loss": record.get("final_loss_mean")})
        sampler = first.sampler
        return engine.denoise(sampler, [it.row["prompt_used"] for it in items], engine.noise([it.seed for it in items], sampler))


def save_lora(path: Path, state_dict: dict[str, Any], config: dict[str, Any]) -> None:
    """A LoRA in diffusers' format (`unet.`-prefixed keys, its peft config as metadata), written atomically."""
    from diffusers import StableDiffusionXLPipeline

    from styleprobe.disk import atomic_write

    atomic_write(path, lambda tmp: StableDiffusionXLPipeline.save_lora_weights(
        save_directory=tmp.parent, unet_lora_layers=state_dict, weight_name=tmp.name,
        unet_lora_adapter_metadata=config))


def _check_file(path: Path, layer_map: LayerMap, what: str) -> None:
    """Every UNet key of a LoRA file acts on a transformer layer of this model (other formats converted by diffusers)."""
    from styleprobe.methods.b_lora.lora import check_keys, file_keys, transformer_layer, unet_keys

    keys = file_keys(path)
    if any(transformer_layer(k) is None for k in unet_keys(keys)):  # e.g. kohya's SGM names: let diffusers convert them
        from diffusers import StableDiffusionXLPipeline

        keys = list(StableDiffusionXLPipeline.lora_state_dict(str(path))[0])
    check_keys(keys, layer_map, what)
