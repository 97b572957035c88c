"""What every scorer is: a named metric that turns a batch of outputs into one or more table columns.

A scorer is built from its entry in the `metrics` config group, loads its model lazily (once per
process, shared between metrics that use the same model) and scores batches. `identity()` names the
exact model and definition; the scoring stage refuses to mix two identities under one column.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

import numpy as np
from PIL import Image

from styleprobe.errors import ConfigError
from styleprobe.metric_roles import MetricRole, kind_roles

if TYPE_CHECKING:  # torch is imported where models load and run: building scorers and checking configs never wait for it
    import torch

P = ParamSpec("P")
R = TypeVar("R")

#: Bumped when a definition changes, so old scores are not mixed with new ones.
DEFINITION_VERSION = 1


@dataclass
class ScoreBatch:
    """One batch of outputs with what each was made from (one entry per table row)."""

    images: list[Image.Image]
    references: list[Image.Image]
    reference_ids: list[str]  # reference digests: reference embeddings are computed once per id
    prompts: list[str]
    contents: list[str]  # the reference's content label ("rabbit")
    subjects: list[str]  # the target prompt's subject ("a cat")
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    device: str | None = None  # where the tensor preprocessing runs (the scorers' device name)
    preprocess_on_device: bool = False  # batched tensor ops on `device` instead of PIL per image (see preprocess.py)

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, preprocess: Any) -> torch.Tensor:
        """The outputs preprocessed once per preprocessing (CLIP and CSD share one, DINO and DINOv2 another)."""
        return self.once(("pixels", preprocess), lambda: self.preprocess(preprocess, self.images))

    def preprocess(self, preprocess: Any, images: list[Image.Image]) -> torch.Tensor:
        """`images` through a scorer's `Preprocess`, by this batch's implementation of it."""
        if self.preprocess_on_device and hasattr(preprocess, "tensors"):
            return preprocess.tensors(images, device_of(self.device or "cpu"))
        return preprocess(images)

    def once(self, key: Any, compute: Callable[[], Any]) -> Any:
        """Compute something about this batch once, e.g. the output embeddings that three CLIP metrics share."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


def device_of(device: Any) -> torch.device:
    """The torch device of a device name (or torch.device); a CUDA device this torch cannot use fails with the fix."""
    from styleprobe.models.devices import resolve_device

    return resolve_device(str(device))


def dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a dtype name such as "bfloat16"."""
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"scoring.dtype={name!r}; choose float32, bfloat16 or float16")
    return dtype


def inference_mode(fn: Callable[P, R]) -> Callable[P, R]:
    """`torch.inference_mode()` around `fn`, importing torch at the call, not when the scorer modules load."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return run


@dataclass
class ScorerSettings:
    """A metric's config entry plus where it runs and which weights it uses.

    `device` and `dtype` are names, so that scorers are built and their identities checked without importing torch;
    `torch_device` and `torch_dtype` give the torch objects where models load and tensors are made.
    """

    name: str
    options: dict[str, Any]
    device: str  # e.g. "cpu", "cuda", "cuda:1"
    weights: str  # "hub" (Hub id or local path), "tiny" (random offline stand-ins) or "toy" (the toy world's trained ones)
    preprocess_on_device: bool = False  # batched tensor preprocessing on `device` (scoring.preprocess)
    dtype: str = "float32"  # the scoring models' weights and inputs (scoring.dtype): float32, bfloat16 or float16

    def __post_init__(self) -> None:
        # a torch.device / torch.dtype from an older caller becomes its name
        self.device = str(self.device)
        self.dtype = str(self.dtype).removeprefix("torch.")

    @functools.cached_property
    def torch_device(self) -> torch.device:
        return device_of(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_of(self.dtype)


class Scorer(ABC):
    """A metric: `columns` it fills, how it is computed (`score`) and with what (`identity`)."""

    kind: ClassVar[str]
    option_names: ClassVar[tuple[str, ...]] = ()
    #: Options every kind takes: they say what a number means, not how it is computed (so not in the identity).
    meaning_options: ClassVar[tuple[str, ...]] = ("role", "better")
    needs_content: ClassVar[bool] = False  # rows whose reference has no content label get no score
    needs_prompt: ClassVar[bool] = False  # a score of the output for its prompt: rows without a prompt are refused

    def __init__(self, settings: ScorerSettings):
        unknown = sorted(set(settings.options) - set(self.option_names) - {"scorer", *self.meaning_options})
        if unknown:
            raise ConfigError(
                f"metrics.{settings.name}: unknown option(s) {', '.join(unknown)}; "
                f"{self.kind} takes {', '.join(self.option_names) or 'no options'}"
            )
        self.settings = settings
        self.name = settings.name
        try:
            self._roles = kind_roles(self.kind, self.name, settings.options)
        except ConfigError as err:
            raise ConfigError(f"metrics.{self.name}: {err}") from None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.name,)

    def roles(self) -> dict[str, MetricRole]:
        """Each column this metric fills -> what it measures (`metric_roles`: its kind's, or its config's `role:`)."""
        return dict(self._roles)

    @property
    def model_column(self) -> str:
        return f"{self.name}_model"

    def describe_model(self) -> str:
        """The model as a reader of the table sees it; stand-in weights always say their numbers are not science."""
        if self.settings.weights == "tiny":
            return f"tiny random {self.family_name()} (machinery check, not science)"
        if self.settings.weights == "toy":
            return f"toy-world {self.family_name()} (findings about the toy, not about SDXL)"
        if self.settings.weights == "random":
            return f"random-weight {self.architecture()} (timing only, not science)"
        return self.weights_name() + self.dtype_note()

    def dtype_note(self) -> str:
        """` in bfloat16` where the models do not run in float32 (which the table's model column then says)."""
        return "" if self.settings.dtype == "float32" else f" in {self.settings.dtype}"

    @abstractmethod
    def family_name(self) -> str:
        """The model family, for the tiny stand-in's label, e.g. 'open_clip'."""

    @abstractmethod
    def architecture(self) -> str:
        """The full-size architecture, for the random-weight label, e.g. 'open_clip ViT-L-14'."""

    @abstractmethod
    def weights_name(self) -> str:
        """The real weights, e.g. 'open_clip ViT-L-14/openai'."""

    def needed_files(self) -> list[Any]:
        """The weights files scoring will read (`models.files.ModelFile`s), found before any image is made; none for the
        tiny, toy and random stand-ins, which styleprobe makes itself."""
        return self.hub_files() if self.settings.weights == "hub" else []

    def hub_files(self) -> list[Any]:
        """The files of the real weights (`scoring.weights: hub`): a Hub id's or a local path's."""
        return []

    def identity(self) -> dict[str, Any]:
        """Everything that determines this metric's numbers (not where it runs)."""
        return {
            "scorer": self.kind,
            "model": self.describe_model(),
            "options": dict(sorted((k, v) for k, v in self.settings.options.items() if k not in self.meaning_options)),
            "weights": self.settings.weights,
            "definition": DEFINITION_VERSION,
            **({} if self.settings.dtype == "float32" else {"dtype": self.settings.dtype}),
        }

    @abstractmethod
    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        """One array per column, one value per image."""


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity in float64 (so that x against itself is 1 to ~1e-12)."""
    import torch.nn.functional as F

    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return (a * b).sum(-1).cpu().numpy()


def cached_rows(
    cache: dict[Any, torch.Tensor], keys: list[Any], compute: Callable[[list[int]], torch.Tensor]
) -> torch.Tensor:
    """Stack cached embeddings for `keys`, computing the missing ones in one call (first index per key)."""
    import torch

    missing: dict[Any, int] = {}
    for i, k in enumerate(keys):
        if k not in cache and k not in missing:
            missing[k] = i
    if missing:
        fresh = compute(list(missing.values()))
        for k, row in zip(missing, fresh, strict=True):
            cache[k] = row
    return torch.stack([cache[k] for k in keys])


def output_embeddings(
    batch: ScoreBatch, model_key: Any, preprocess: Callable[[list[Image.Image]], torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The outputs' embeddings under one model, computed once per batch for every metric on that model."""
    return batch.once((model_key, "images"), lambda: encode(batch.pixels(preprocess)))


def reference_embeddings(
    batch: ScoreBatch, model_key: Any, preprocess: Callable[[list[Image.Image]], torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The references' embeddings under one model, each reference encoded once per process."""
    return cached_rows(
        embedding_cache(model_key, "reference"),
        batch.reference_ids,
        lambda idx: encode(batch.preprocess(preprocess, [batch.references[i] for i in idx])),
    )


_MODELS: dict[Any, Any] = {}
_EMBEDDINGS: dict[Any, dict[Any, torch.Tensor]] = {}
LOAD_COUNT = {"n": 0}  # scoring models read in this process (tests check that each loads once)


def shared_model(key: Any, build: Callable[[], Any]) -> Any:
    """One instance per process for each model key, shared by every metric that uses that model."""
    if key not in _MODELS:
        _MODELS[key] = build()
        LOAD_COUNT["n"] += 1
    return _MODELS[key]


def embedding_cache(model_key: Any, what: str) -> dict[Any, torch.Tensor]:
    """A per-model cache (e.g. of reference or text embeddings), so each is computed once per process."""
    return _EMBEDDINGS.setdefault((model_key, what), {})


def release_models() -> None:
    """Forget every loaded scoring model and cached embedding (frees memory between jobs or in tests)."""
    _MODELS.clear()
    _EMBEDDINGS.clear()


_REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer choosable by its `kind` in metric configs."""
    _REGISTRY[cls.kind] = cls
    return cls


#: The modules whose scorers register themselves; imported on the first `registry()` call, not with the package, so
#: that the toy model can use one scorer's network (`csd_model`) without importing every scorer.
SCORER_MODULES = ("clip", "csd", "dino", "judge", "quality.imagereward", "quality.pickscore", "quality.hps",
                  "quality.aesthetic")


def registry() -> Mapping[str, type[Scorer]]:
    """Every scorer kind -> its class."""
    import importlib

    for name in SCORER_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return dict(_REGISTRY)
