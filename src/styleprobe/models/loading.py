"""Loading a base pipeline: one code path for the Hub, local folders and the tiny and toy models.

`load` reads the base pipeline only: what a method adds to it (IP-Adapter's adapter and processors,
StyleAligned's shared attention) is the method's business, attached on first use and kept on the model.
Loaded models are kept per process, so every job of a basic-launcher multirun reuses them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from styleprobe.models.devices import resolve_device, resolve_dtype
from styleprobe.models.presets import ModelSpec
from styleprobe.models.sources import resolve_source, unavailable

if TYPE_CHECKING:  # torch is imported where it is used: planning and config errors never wait for it
    import torch
log = logging.getLogger(__name__)


def load_unet_config(spec: ModelSpec) -> dict[str, Any]:
    """The UNet's config only (a JSON file of a few KB): enough to derive the layer map before loading any weights.

    Read with huggingface_hub alone (a local folder, the cache, or the Hub), so a missing model is reported in about
    a second, before torch or diffusers are imported.
    """
    import json

    from huggingface_hub.errors import EntryNotFoundError

    base = resolve_source(spec.base)
    try:
        local = Path(base).expanduser() / "unet" / "config.json"
        if Path(base).expanduser().is_dir():
            if not local.is_file():
                raise FileNotFoundError(f"{local} does not exist")
            path = local
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(base, "config.json", subfolder="unet", revision=spec.revision))
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, EntryNotFoundError) as err:
        raise unavailable("the UNet config", base, "unet", err) from err


@functools.cache
def quiet_libraries() -> None:
    """Keep the run log about the run: no per-component progress bars, load chatter or deprecation notices from
    diffusers and transformers. Called just before either is first used, not at start-up: importing them takes
    seconds, and a config error should not wait for that."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated")


def build_unet_structure(unet_config: dict[str, Any]):
    """The UNet's modules on the `meta` device: its full structure with no memory for weights."""
    import torch

    quiet_libraries()
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(unet_config)


@dataclass
class LoadedModel:
    """A base pipeline, with what methods attached to it (keyed by method name) and per-process caches."""

    spec: ModelSpec
    pipe: Any
    device: torch.device
    dtype: torch.dtype
    default_scheduler: Any = None  # the pipeline's own, restored whenever a run asks for `default`
    attached: dict[str, Any] = field(default_factory=dict)  # method name -> its state on this pipeline
    active: str | None = None  # the method the pipeline is set up for now
    prompts: dict[tuple[str, str, bool], tuple[Any, ...]] = field(default_factory=dict)  # encoded prompts


_LOADED: dict[tuple, LoadedModel] = {}


LOAD_COUNT = {"n": 0}  # how many times weights were read in this process (tests check reuse)


def load(spec: ModelSpec, device: str = "auto") -> LoadedModel:
    """Load (or reuse) the preset's base pipeline; one model is kept per process at a time."""
    dev = resolve_device(device)
    dt = resolve_dtype(spec.dtype, dev)
    key = (spec, str(dev), str(dt))
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()  # free the previous model before loading another
    if dev.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    model = _load(spec, dev, dt)
    _LOADED[key] = model
    LOAD_COUNT["n"] += 1
    return model


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return {"sdxl": StableDiffusionXLPipeline, "sd15": StableDiffusionPipeline}[family]


#: A UNet this size or larger is a full-size model (SD 1.5's has 0.86 B parameters, SDXL's 2.57 B; the tiny and toy
#: models' are thousands of times smaller): on the CPU its run is worth a warning.
FULL_SIZE_UNET_PARAMETERS = 500_000_000


def _load(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Read the base pipeline. SDXL's invisible watermark stays off (InstantStyle's `add_watermarker=False`): with
    the `invisible-watermark` package installed diffusers would stamp every image, pixel noise in every metric that
    depends on the environment."""
    quiet_libraries()
    base = resolve_source(spec.base)
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": spec.revision}
    if spec.variant:
        kwargs["variant"] = spec.variant
    if spec.family == "sdxl":
        kwargs["add_watermarker"] = False
    if spec.family == "sd15":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    log.info("loading %s from %s (%s, %s)", spec.name, base, device, dtype)
    try:
        pipe = _pipeline_class(spec.family).from_pretrained(base, **kwargs)
    except (OSError, ValueError) as err:
        raise unavailable("the base pipeline", base, None, err) from err
    unet_parameters = sum(p.numel() for p in pipe.unet.parameters())
    if device.type == "cpu" and unet_parameters >= FULL_SIZE_UNET_PARAMETERS:
        log.warning(
            "engine.device is the CPU here: %s (%s, %s, a UNet of %.2f B parameters) generates there in %s, minutes per "
            "image; on a GPU machine set engine.device=cuda (auto picks the CPU when no GPU is found through NVML, or "
            "through torch on ROCm)", spec.name, spec.family, base, unet_parameters / 1e9, str(dtype).removeprefix("torch."),
        )
    pipe.to(device)
    pipe.vae.enable_slicing()  # one image decoded at a time: the decode's memory does not grow with the batch
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, default_scheduler=pipe.scheduler)


def load_text_tower(source: str, device: torch.device, dtype: torch.dtype):
    """A CLIP text tower with its projection (e.g. ViT-H's), for content text in the adapter's space."""
    quiet_libraries()
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(source)
        encoder = CLIPTextModelWithProjection.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as err:
        raise unavailable("the content text encoder", source, None, err) from err
    return tokenizer, encoder.to(device).eval()
