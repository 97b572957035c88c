"""What every method is to the rest of styleprobe: a plug-in with a few hooks, called the same way for all.

A method (IP-Adapter, StyleAligned, ...) says
- which attention site names the transformer layers its layer patterns select (`pattern_site`: the layer map of
  patterns and of the rows' `layers` column), so `all`, `none`, `style`, one-hot and leave-one-out sweeps mean the
  same thing for every method, and which sites of a selected layer it changes (`acts_on`);
- its own knobs (`Knobs`, a frozen dataclass): each knob given as a list in the config is swept, and the
  plan crosses the knobs with the shared axes (style reference, prompt, seed, pattern);
- what its rows carry and its keys hash beyond the shared columns (`row_fields`, `key_fields`);
- how its items may share one pipeline call (`batch_key`);
- what it sets up on a loaded pipeline (`activate` / `deactivate`), what it prepares once per reference
  (`prepare`: encodings, inverted latents, trained weights), and how it runs one batch (`run_batch`).
Plan, engine, store, scoring and analysis only call these hooks; nothing outside a method's own package
asks which method it is. A new method is one package here whose `plugin.py` holds a `@register`ed subclass, plus
one config file in `experiments/method/`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from styleprobe.config import as_list
from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.data.style_sets import StyleReference
from styleprobe.errors import ConfigError
from styleprobe.models.layers import LayerMap, Pattern, expand_patterns
from styleprobe.run.sampler import Sampler
from styleprobe.run.windows import FULL, Window, check_steps, expand_windows

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from styleprobe.models.files import ModelFile
    from styleprobe.models.loading import LoadedModel
    from styleprobe.models.presets import ModelSpec


class Item(Protocol):
    """What a method reads of a planned item (`run.plan.WorkItem` is one): declared here, beside the hooks that take
    it, so the interface needs nothing from the run pipeline that calls it."""

    key: str
    row: dict[str, Any]  # every parameter, as the table stores it
    entry: MethodEntry
    knobs: Any
    pattern: Pattern
    reference: StyleReference
    prompt: PromptSpec
    seed: int
    window: Window  # the denoising steps its pattern acts on

    @property
    def sampler(self) -> Sampler: ...


class Generator(Protocol):
    """What a method calls of the engine (`run.engine.Engine` is one): the loaded model, each sample's noise, and one
    pipeline call."""

    model: LoadedModel

    def noise(self, seeds: Sequence[int], sampler: Sampler) -> torch.Tensor: ...

    def denoise(self, sampler: Sampler, prompts: Sequence[str], latents: torch.Tensor,
                **kwargs: Any) -> list[Image.Image]: ...


class ArtefactStore(Protocol):
    """Where a method keeps its per-reference work (`run.store.Store` is one): keyed artefacts in the results folder."""

    def artefact_dir(self, kind: str, key: str) -> Path: ...

    def has_artefact(self, kind: str, key: str) -> bool: ...

    def write_tensors(self, kind: str, key: str, tensors: dict[str, Any], metadata: dict[str, Any]) -> Path: ...

    def read_tensors(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]: ...


#: Entry settings that are not knobs: the plug-in's name, the sampler defaults, the entry's own patterns and windows.
ENTRY_SETTINGS = ("type", "sampler", "patterns", "windows")


@dataclass(frozen=True)
class Parts:
    """Everything that makes one item, as the method hooks see it while the plan is built."""

    spec: ModelSpec
    dtype: str
    sampler: Sampler
    knobs: Any
    pattern: Pattern
    reference: StyleReference
    prompt: PromptSpec
    seed: int
    layer_map: LayerMap | None = None  # the entry's map (the method's site)
    style_set: tuple[StyleReference, ...] = ()  # every reference of the sweep, for methods that combine two
    window: Window = FULL  # the denoising window the pattern acts in


class Method(ABC):
    """A way of putting a reference's style into generation. Subclasses set the class attributes and hooks."""

    name: ClassVar[str]  # the registry name: the `method` row column, part of every key
    pattern_site: ClassVar[str]  # "attn1" | "attn2": the site whose module names label the layers patterns select
    acts_on: ClassVar[tuple[str, ...]] = ()  # the sites of a selected layer the method changes (empty: pattern_site)
    Knobs: ClassVar[type]  # frozen dataclass of the method's own settings, with the published defaults
    unkeyed: ClassVar[frozenset[str]] = frozenset()  # knobs recorded in rows that do not change the image
    replicate_knobs: ClassVar[frozenset[str]] = frozenset()  # knobs that draw replicates (a training seed): analysis
    # resamples them with the unit instead of comparing their values as conditions
    sampler_defaults: ClassVar[dict[str, Any]] = {}  # the method's own sampler settings (below `sampler.*`)
    #: How the method honours denoising windows (`at_step`): "per_sample" (items with different windows share one
    #: call), "per_batch" (a call holds one window), "" (the full window only: another is refused at planning).
    window_support: ClassVar[str] = ""

    # planning: no model is loaded -------------------------------------------------------------------
    def check_knobs(self, knobs: Any, where: str) -> None:
        """Values the types allow but the method does not (negative strengths, unknown modes)."""

    def check_model(self, spec: "ModelSpec", where: str) -> None:
        """A model preset the method cannot use (checked before even the UNet's config is read)."""

    def check_entry(self, entry: "MethodEntry", spec: "ModelSpec") -> None:
        """Settings that only make sense together (a sampler the method cannot run, a model it cannot use)."""

    def content_label_use(self, knobs: Any) -> str:
        """What items with these knobs use the reference's content label (manifest column `content`) for; "" if nothing."""
        return ""

    def effective_pattern(self, pattern: Pattern, knobs: Any, layer_map: LayerMap) -> Pattern:
        """The layers an item really acts on, when a knob switches some of the pattern's layers off."""
        return pattern

    def effective_window(self, pattern: Pattern, knobs: Any, window: Window) -> Window:
        """The window an item really has: a pattern that acts on no layer is the plain model at every step, so its
        window changes nothing and it is the full window's item (one image, today's key). A method whose `none`
        still changes the image (StyleAligned's shared norms) keeps the window."""
        return window if any(pattern.scales) else FULL

    def model_identity(self, spec: "ModelSpec") -> dict[str, Any]:
        """What the method loads besides the base pipeline that determines an image (an adapter checkpoint)."""
        return {}

    def needed_files(self, spec: "ModelSpec", items: Sequence["Item"]) -> list["ModelFile"]:
        """The model files besides the base pipeline that generating `items` reads (an adapter checkpoint, its image
        encoder, a LoRA on the Hub): found or refused before any image is made (`models.files.check_found`)."""
        return []

    def check_files(self, spec: "ModelSpec", items: Sequence["Item"]) -> None:
        """Settings that must agree with the configs of the files `needed_files` found (embedding sizes), checked
        before any weights are loaded."""

    def prompt_used(self, parts: Parts) -> str:
        """The prompt the method gives the pipeline for this item (the target prompt itself by default)."""
        return parts.prompt.prompt

    def key_fields(self, parts: Parts) -> dict[str, Any]:
        """The method's part of the item key: its knobs (those that change the image)."""
        return {k: v for k, v in knob_values(parts.knobs).items() if k not in self.unkeyed}

    def row_fields(self, parts: Parts) -> dict[str, Any]:
        """The method's columns in the table: its knobs, and anything else a reader needs to know."""
        return dict(knob_values(parts.knobs))

    def prepare_keys(self, parts: Parts) -> list[str]:
        """Keys of the per-reference work an item needs (an inverted reference, a trained LoRA), as `prepare` keeps it.

        A shard takes an item by its first such key, so items sharing that work land in one job and no two jobs
        do it twice; the row lists them (`prepare_keys`) so a report can charge that work to the method.
        """
        return []

    def batch_key(self, item: "Item") -> tuple[Any, ...]:
        """Items with equal keys (and equal samplers) may share one pipeline call."""
        return ()

    # generation ---------------------------------------------------------------------------------------
    @abstractmethod
    def activate(self, model: "LoadedModel") -> None:
        """Set the pipeline up for this method's calls, attaching what it needs on first use."""

    @abstractmethod
    def deactivate(self, model: "LoadedModel") -> None:
        """Leave the pipeline as the base model for other methods' calls (cheaply: no weights are freed)."""

    def prepare(self, engine: "Generator", items: Sequence["Item"], store: "ArtefactStore") -> list[dict[str, Any]] | None:
        """Per-reference work for these items, done once and kept (in memory or as keyed artefacts).

        May return one record per piece of work (what it was, its seconds, whether it was reused) for the run's costs.
        """
        return None

    @abstractmethod
    def run_batch(self, engine: "Generator", items: Sequence["Item"]) -> list["Image.Image"]:
        """One pipeline call for items of one batch key; their images, in order."""

    def at_step(self, engine: "Generator", items: Sequence["Item"], on: Sequence[bool]) -> None:
        """Switch each item's pattern on or off for the coming step (`on[j]`: step lies in item j's window), inside
        the method's `run_batch` call. The engine calls it before the first step and after any step where some item
        enters or leaves its window, and only for batches with a window other than the full one."""
        raise NotImplementedError(f"{self.name} does not act in denoising windows")

    def pipeline_rows(self, items: Sequence["Item"]) -> int:
        """The samples one call of `run_batch(items)` puts through the UNet (one CFG half): the items, plus any
        reference or negative rows. The rows' `extra_row_share` (the cost table's reference-row share) comes from it."""
        return len(items)

    def extra_rows(self, batch: int) -> int:
        """Samples a batch of `batch` items adds to the UNet's input beyond the items (at most): what the memory
        estimate (`styleprobe.models.memory`) budgets for on top of them."""
        return 0


#: name -> plug-in class, filled by @register when a method's `plugin` module is imported (`registry` imports them all).
REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED: list[bool] = []


def registry() -> dict[str, type[Method]]:
    """Every method: the `plugin` module of each package in `styleprobe/methods/` is imported on first call, so a new
    method is one folder (and its config file) that nothing else names. Imported here, at first use, rather than by
    the package: a method's mechanism (the IP-Adapter processor the toy model uses) imports without the others."""
    if not _DISCOVERED:
        import importlib
        import pkgutil
        from pathlib import Path

        _DISCOVERED.append(True)
        for found in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if found.ispkg:
                importlib.import_module(f"{__package__}.{found.name}.plugin")
    return REGISTRY

#: The columns every row has, whatever the method (the plan writes them); a knob may not take one of these names.
ROW_COLUMNS: tuple[str, ...] = (
    "key", "dtype", "method", "injection", "style", "content", "prompt", "negative_prompt", "seed", "steps",
    "guidance", "height", "width", "scheduler", "model", "sweep", "target", "layers", "n_layers", "layer_scales",
    "reference", "reference_digest", "subject", "prompt_used", "knob_columns", "replicate", "prepare_keys", "base",
    "image_path", "run_id", "seconds", "peak_gpu_bytes", "extra_row_share", "window", "window_start", "window_end", "window_steps",
)


def register(cls: type[Method]) -> type[Method]:
    """Add a method to the registry; its knobs must not shadow a shared row column."""
    clash = sorted({f.name for f in dataclasses.fields(cls.Knobs)} & set(ROW_COLUMNS))
    if clash:
        raise TypeError(f"{cls.__name__}'s knob(s) {', '.join(clash)} would overwrite shared row columns; rename them")
    REGISTRY[cls.name] = cls
    return cls


def method(name: str) -> Method:
    """The plug-in called `name`, or a one-line error listing the valid names."""
    methods = registry()
    if name not in methods:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(methods))} (experiments/method/)")
    return methods[name]()


def knob_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(registry()[name].Knobs)]


@dataclass(frozen=True)
class MethodEntry:
    """One entry of the `method` config group: a plug-in with the knob combinations and patterns it sweeps."""

    name: str  # the entry's name in the config (usually the plug-in's)
    method: Method
    variants: tuple[Any, ...]  # Knobs instances, one per combination of the swept knobs
    patterns: tuple[Pattern, ...]  # on this method's site
    layer_map: LayerMap
    sampler: Sampler
    windows: tuple[Window, ...] = (FULL,)  # the denoising windows its patterns act in


def parse_entries(
    methods: Mapping[str, Any],
    *,
    patterns: Sequence[Any],
    windows: Sequence[Any] = ("full",),
    presets: Mapping[str, Sequence[str] | None],
    sampler: Mapping[str, Any],
    model: Mapping[str, Any],
    layer_map: Callable[[str], LayerMap],
    spec: "ModelSpec | None" = None,
) -> list[MethodEntry]:
    """The `method` group as entries, every knob and pattern checked; `layer_map(site)` gives a site's map."""
    if not methods:
        raise ConfigError("no method chosen; e.g. method=ip_adapter or method=[ip_adapter,style_aligned]")
    entries = []
    for entry_name, body in methods.items():
        body = dict(body or {})
        plugin = method(str(body.get("type", entry_name)))
        where = f"method.{entry_name}"
        if spec is not None:
            plugin.check_model(spec, where)
        knobs = {k: v for k, v in body.items() if k not in ENTRY_SETTINGS}
        valid = knob_names(plugin.name)
        unknown = sorted(set(knobs) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown knob(s) {', '.join(unknown)} for {where} ({plugin.name}); valid: {', '.join(valid)}"
            )
        variants = _variants(plugin, knobs, where)
        sampler_defaults = {**plugin.sampler_defaults, **dict(body.get("sampler") or {})}
        entry_sampler = Sampler.resolve(sampler, sampler_defaults, model, where=f"{where}.sampler")
        entry_windows = _windows(plugin, body.get("windows"), windows, where, entry_sampler.steps)
        lm = layer_map(plugin.pattern_site)
        specs = as_list(body["patterns"]) if body.get("patterns") is not None else list(patterns)
        expanded = tuple(expand_patterns(specs, lm, presets))
        entry = MethodEntry(str(entry_name), plugin, variants, expanded, lm, entry_sampler, entry_windows)
        entries.append(entry)
    return entries


def _windows(plugin: Method, own: Any, shared: Sequence[Any], where: str, steps: int) -> tuple[Window, ...]:
    """An entry's windows (its own `windows`, else `injection.windows`), each holding a step, honoured by the method."""
    what = f"{where}.windows" if own is not None else "injection.windows"
    windows = expand_windows(as_list(own) if own is not None else list(shared), what)
    check_steps(windows, steps, what)
    partial = [w for w in windows if not w.full]
    if partial and not plugin.window_support:
        raise ConfigError(f"{what}: method {plugin.name} acts on every step and cannot act in a window "
                          f"({partial[0].name}); set {where}.windows=[full]")
    return windows


def _variants(plugin: Method, given: Mapping[str, Any], where: str) -> tuple[Any, ...]:
    """Every combination of the knobs given as lists (the others at their given or default value)."""
    hints = typing.get_type_hints(plugin.Knobs)
    names = [f.name for f in dataclasses.fields(plugin.Knobs)]
    choices = {n: [_coerce(v, hints[n], f"{where}.{n}") for v in as_list(given[n])] for n in names if n in given}
    for n, values in choices.items():
        if not values:
            raise ConfigError(f"{where}.{n} is an empty list; give at least one value")
    out: list[Any] = []
    for combo in itertools.product(*choices.values()):
        knobs = plugin.Knobs(**dict(zip(choices, combo)))
        plugin.check_knobs(knobs, where)
        if knobs not in out:
            out.append(knobs)
    return tuple(out)


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """A config value as the knob's declared type (bool, int, float, str, or one of them or None)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for t in options:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("null" if t is type(None) else ("true/false" if t is bool else t.__name__) for t in options)
    raise ConfigError(f"{what}={value!r}; give {names}")


def knob_values(knobs: Any) -> dict[str, Any]:
    """`dataclasses.asdict` of a knobs value, computed once per distinct value: a plan of 100,000 items has a handful
    of knob combinations, and asdict per item was a tenth of planning. Read-only: callers copy before changing it."""
    try:
        return _knob_values(knobs)
    except TypeError:  # a knob holding an unhashable value (a list)
        return dataclasses.asdict(knobs)


@functools.lru_cache(maxsize=1024)
def _knob_values(knobs: Any) -> dict[str, Any]:
    return dataclasses.asdict(knobs)
