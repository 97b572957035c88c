"""Model presets and loading: one code path for the Hub, local folders and the tiny embedded model.

A preset (the `model` config group) names a base pipeline, an IP-Adapter checkpoint in h94's layout and
the text tower whose CLIP space matches the adapter's image encoder (used for content subtraction).
Sources are Hub ids, local folders, `tiny:<folder>` (the random-weight embedded model, built on first use) or
`toy:<folder>` (the trained toy world, assembled from the shipped weights on first use).
`load` reads the base pipeline only: what a method adds to it (IP-Adapter's adapter and processors,
StyleAligned's shared attention) is the method's business, attached on first use and kept on the model.
Loaded models are kept per process, so every job of a basic-launcher multirun reuses them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from styleprobe.errors import ConfigError, ModelUnavailableError

if TYPE_CHECKING:  # torch is imported where it is used: planning and config errors never wait for it
    import torch

log = logging.getLogger(__name__)

FAMILIES = ("sdxl", "sd15")
ADAPTER_KINDS = ("global", "plus")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class AdapterSpec:
    """Where an IP-Adapter checkpoint lives, in h94/IP-Adapter's layout."""

    source: str
    subfolder: str
    weight_name: str
    image_encoder_folder: str = "image_encoder"
    kind: str = "global"  # "global": pooled CLIP image embedding; "plus": patch tokens (Resampler)


@dataclass(frozen=True)
class ModelSpec:
    """A model preset, as the `model` config group gives it."""

    name: str
    family: str
    base: str
    adapter: AdapterSpec
    content_text_encoder: str | None = None  # None: the pipeline's own text_encoder_2 (SDXL + bigG)
    variant: str | None = None
    revision: str | None = None
    dtype: str = "auto"

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelSpec":
        """Build from a config mapping (sampler defaults in it are ignored); bad values fail with a one-line fix."""
        d = dict(cfg)
        adapter = AdapterSpec(**dict(d.pop("adapter")))
        known = {"name", "family", "base", "content_text_encoder", "variant", "revision", "dtype"}
        spec = cls(adapter=adapter, **{k: d[k] for k in known if k in d})
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family={self.family!r} is unknown; use one of {', '.join(FAMILIES)}")
        if self.adapter.kind not in ADAPTER_KINDS:
            raise ConfigError(f"model.adapter.kind={self.adapter.kind!r} is unknown; use one of {', '.join(ADAPTER_KINDS)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is unknown; use auto or one of {', '.join(DTYPES)}")
        if self.family == "sd15" and self.content_text_encoder is None and self.adapter.kind == "global":
            raise ConfigError(
                "model.content_text_encoder is required for sd15 (its adapter's image encoder is ViT-H): "
                "set it to laion/CLIP-ViT-H-14-laion2B-s32B-b79K or a local copy"
            )

    @property
    def base_identity(self) -> dict[str, Any]:
        """What about the base pipeline determines an image: part of every item's key."""
        return {"name": self.name, "base": self.base, "variant": self.variant, "revision": self.revision}

    @property
    def adapter_id(self) -> str:
        return f"{self.adapter.source}/{self.adapter.subfolder}/{self.adapter.weight_name}"

    @property
    def identity(self) -> dict[str, Any]:
        """The base pipeline's identity with the IP-Adapter checkpoint's: what IP-Adapter items are keyed by."""
        return {**self.base_identity, "adapter": self.adapter_id}


def resolve_source(source: str) -> str:
    """Turn `tiny:<folder>` / `toy:<folder>` into the tiny / toy model's local folder; Hub ids and paths pass through.

    Before the first Hub id is used, `hub_offline` decides once whether the Hub can be reached at all.
    """
    if source.startswith("tiny:"):
        from styleprobe.tiny import ensure_tiny

        return str(ensure_tiny() / source.removeprefix("tiny:"))
    if source.startswith("toy:"):
        from styleprobe.toy.assemble import ensure_toy

        return str(ensure_toy() / source.removeprefix("toy:"))
    if not Path(source).expanduser().exists():
        hub_offline()
    return source


HUB_PROBE_SECONDS = 2.0
HUB_UNREACHABLE = {"probed": False}  # set when `hub_offline` found no route to the Hub (rather than HF_HUB_OFFLINE)


@functools.cache
def hub_offline() -> bool:
    """Whether models come from the local Hugging Face cache only: HF_HUB_OFFLINE is set, or the Hub client could not
    connect to its endpoint within HUB_PROBE_SECONDS (`hub_connect_error`). In the second case the offline mode is
    switched on for this process, so a missing model fails at once with its one-line error instead of after the Hub
    client's retries (about 30 s)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    error = hub_connect_error(constants.ENDPOINT)
    if error is None:
        return False
    log.info("the Hugging Face Hub (%s) cannot be reached (%s): using the local cache only", constants.ENDPOINT, error)
    HUB_UNREACHABLE["probed"] = True
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True


def hub_connect_error(endpoint: str) -> Exception | None:
    """Why a HEAD request to `endpoint` through huggingface_hub's own HTTP session could not connect, else None.

    The session is the one `hf download` uses, so HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and a client factory set
    in code) apply to the probe as to every download. Only a failed connection (to the endpoint, or to the proxy)
    counts: any answer, whatever its status, and any other failure leave the Hub to report itself.
    """
    import importlib

    from huggingface_hub.utils import get_session

    session = get_session()
    http = importlib.import_module(type(session).__module__.partition(".")[0])  # httpx (hub 1.x) or httpx2 (2.x)
    try:
        session.head(endpoint, timeout=HUB_PROBE_SECONDS, follow_redirects=False)
    except (http.ConnectError, http.ConnectTimeout) as err:
        return err
    except Exception as err:  # noqa: BLE001 - reached, but something else went wrong: the Hub client says what
        log.debug("the Hub probe of %s got through but failed: %s", endpoint, err)
    return None


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device of `engine.device`; a CUDA device this torch cannot use fails with the fix."""
    import torch

    name = device_name(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"engine.device={device} means a CUDA GPU here (its driver reports one), but this torch cannot use it "
            "(torch.cuda.is_available() is False); set engine.device=cpu, or install a CUDA build of torch"
        )
    return torch.device(name)


_DEVICE_RE = re.compile(r"^[a-z]+(:\d+)?$")


def device_name(device: str = "auto") -> str:
    """`engine.device` as a name (`cpu`, `cuda`, `cuda:1`, ...), decided without importing torch where NVIDIA's NVML
    answers, so planning and the resume check (whose keys hold the dtype the device implies) never wait seconds for
    it. `auto` is `cuda` when `gpu_visible`, else `cpu`: what torch decides, checked by `resolve_device` before
    loading."""
    device = str(device).strip()
    if device == "auto":
        return "cuda" if gpu_visible() else "cpu"
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"engine.device={device!r} is not a device; give auto, cpu, cuda or cuda:<index>")
    return device


#: The device node of AMD's GPU compute driver: ROCm cannot run without it, so without it torch is not asked.
ROCM_DEVICE = Path("/dev/kfd")


@functools.cache
def gpu_visible() -> bool:
    """Whether a GPU this process may use is there. NVIDIA's driver is asked through NVML (ctypes, no CUDA context: a
    later fork stays safe; microseconds). Where NVML does not answer and a ROCm runtime is present (ROCM_DEVICE),
    torch is asked: its `cuda` device is HIP in ROCm builds. That import (1-2 s) is paid at planning only on such
    machines, which import torch to generate anyway; elsewhere the answer is `cpu` without torch. CUDA_VISIBLE_DEVICES
    set to nothing (or -1) hides every GPU, as it does from torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    count = nvml_gpu_count()
    if count is not None:
        return count > 0
    if not ROCM_DEVICE.exists():
        return False
    import torch

    return torch.cuda.is_available()


def nvml_gpu_count() -> int | None:
    """How many GPUs NVIDIA's NVML reports; None when there is no NVML (or it cannot start: no NVIDIA driver)."""
    import ctypes

    for library in ("libnvidia-ml.so.1", "nvml.dll"):
        try:
            nvml = ctypes.CDLL(library)
        except OSError:
            continue
        count = ctypes.c_uint(0)
        try:
            if nvml.nvmlInit_v2() != 0:
                return None
            ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
            nvml.nvmlShutdown()
        except AttributeError:  # an NVML too old to have the v2 calls
            return None
        return count.value if ok else 0
    return None


def dtype_name(dtype: str, device: str) -> str:
    """`model.dtype` as a name, without torch: `auto` is fp16 on a GPU (SDXL's published weights are fp16), else fp32."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    return dtype


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on a GPU (nothing to do on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Bytes of GPU memory allocated at the peak since the last reset; None on the CPU (not measured)."""
    if device.type != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(device))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype of `dtype_name`."""
    import torch

    return getattr(torch, dtype_name(dtype, device.type))


def unavailable(what: str, source: str, subfolder: str | None, err: Exception) -> ModelUnavailableError:
    where = f"{source}" + (f" (subfolder {subfolder})" if subfolder else "")
    if Path(source).is_absolute() or source.startswith("."):
        fix = f"the local folder {source} lacks it; point the preset at a folder with the Hub repository's layout"
    else:
        fix = (
            f"download it on a machine with network access (hf download {source}) into the Hugging Face cache, "
            f"or into a folder and set the preset's source to that folder"
        )
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if type(err).__name__ == "LocalEntryNotFoundError":  # huggingface_hub's long "check your connection" text
        from huggingface_hub import constants

        why = "the Hub cannot be reached" if HUB_UNREACHABLE["probed"] else "HF_HUB_OFFLINE is set"
        first = f"not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}"
    return ModelUnavailableError(f"cannot load {what} from {where}: {first[:200]}; {fix}")


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
