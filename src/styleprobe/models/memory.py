"""How many samples a generation batch may hold on a GPU: the loaded model's weights plus a per-sample cost.

`engine.batch_size: auto` picks, per method and sampler, the largest of `BATCH_SIZES` whose estimated peak
leaves `SPARE_BYTES` of the card free:

    peak(batch) = resident + FLOOR_BYTES + max(denoise(rows), decode)

- `resident`: the parameters and buffers of every module the pipeline holds once the method is attached (the
  UNet with its adapters and LoRAs, the VAE, both text towers, the IP-Adapter's image encoder, a content text
  tower), summed from the modules themselves (`resident_bytes`). With SDXL's real encoders that is 10.6 GiB in fp16.
- `denoise(rows) = UNET_FACTOR x latent_h x latent_w x unet.block_out_channels[0] x dtype bytes x rows`: the UNet's
  activations, per row of its input. `rows = (batch + method extras) x (2 under classifier-free guidance)`; the
  extras are what `Method.extra_rows` adds (StyleAligned: at most one reference row per item).
- `decode = DECODE_FACTOR x H x W x vae.block_out_channels[1] x decode bytes` for one image (the decoder's largest
  activation: its full-resolution stage entrance, 1 GiB at 1024 px in float32), plus the float32 copy of the VAE's
  weights when the pipeline upcasts it (fp16 with `force_upcast`, as SDXL's VAE). The VAE decodes one image at a
  time (`enable_slicing`), so the decode does not grow with the batch.

Calibration (benchmarks/README.md, README "Speed"): on an H100, SDXL at 1024 px in fp16 with 2-layer stand-in
encoders and the whole batch decoded at once peaked at 22 GiB at batch 4 and 38 GiB at batch 8: 4 GiB per sample,
the decode's (DECODE_FACTOR = 4), on 5.7 GiB of weights (FLOOR_BYTES: the rest of the 6 GiB intercept). The
UNet's term is not separated by those runs (the decode dominated them, which bounds it by 2 GiB per row); it is
set from a count of SDXL's live tensors at 1024 px (skip connections, a resnet's input, norm and activation at
128 x 128 with 960 channels, the transformer's feed-forward at 64 x 64: about 0.2 GiB per row) rounded up to
0.31 GiB per row. `benchmarks/memory_estimate.py` measures both terms on a GPU. Margin: the estimate reproduces
the H100 peaks within 0.2 GiB; a batch is chosen only if the estimate stays `SPARE_BYTES` (1 GiB: the CUDA
context, allocator fragmentation, cuDNN workspaces) below the card's memory. Should it still run out, the engine
halves the batch (engine.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from styleprobe.models.loading import LoadedModel
    from styleprobe.run.sampler import Sampler

log = logging.getLogger(__name__)

GIB = 2**30
DECODE_FACTOR = 4.0  # decoder peak per image, in units of its full-resolution entrance activation (H100: 4 GiB / image)
UNET_FACTOR = 32.0  # UNet peak per input row, in units of latent_h x latent_w x block_out_channels[0] x dtype bytes
FLOOR_BYTES = int(0.25 * GIB)  # beyond weights and activations: latents, embeddings, kernels' workspaces
SPARE_BYTES = 1 * GIB  # kept free below the card's memory
BATCH_SIZES = (8, 4, 2, 1)  # auto's choices: 8 is where the H100's seconds per image were measured (1.44 s)
CPU_BATCH_SIZE = 8


@dataclass(frozen=True)
class Estimate:
    """The estimated peak of one batch, by term (bytes)."""

    batch: int
    resident: int
    denoise: int
    decode: int
    floor: int = FLOOR_BYTES

    @property
    def total(self) -> int:
        return self.resident + self.floor + max(self.denoise, self.decode)

    def describe(self) -> str:
        g = lambda b: f"{b / GIB:.1f}"  # noqa: E731
        return (f"{g(self.total)} GiB at batch {self.batch}: weights {g(self.resident)}, denoising {g(self.denoise)}, "
                f"decoding {g(self.decode)}")


def module_bytes(modules: Iterable[Any]) -> int:
    """Bytes of the parameters and buffers of `modules`, each tensor counted once (modules may share them)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def _modules_in(obj: Any, depth: int = 3) -> list[Any]:
    """The torch modules in a method's attached state (dataclass fields, tuples, lists, dicts, a few levels deep)."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return [obj]
    if depth == 0:
        return []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children: Iterable[Any] = (getattr(obj, f.name) for f in dataclasses.fields(obj))
    elif isinstance(obj, Mapping):
        children = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    else:
        return []
    return [m for child in children for m in _modules_in(child, depth - 1)]


def resident_bytes(model: LoadedModel) -> int:
    """Weights the loaded model keeps on its device: the pipeline's modules (the image encoder once the adapter is
    attached) and the modules in what methods attached (e.g. a content text tower, a projection set aside)."""
    import torch

    pipe_modules = [m for m in model.pipe.components.values() if isinstance(m, torch.nn.Module)]
    return module_bytes([*pipe_modules, *(m for state in model.attached.values() for m in _modules_in(state))])


def _bytes_of(dtype: torch.dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype, device="meta").element_size()


def decode_dtype(vae_config: Mapping[str, Any], dtype: torch.dtype) -> torch.dtype:
    """The dtype the SDXL pipeline decodes in: float32 when the VAE is fp16 and its config forces the upcast."""
    import torch

    return torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast", False) else dtype


def denoise_bytes(unet_config: Mapping[str, Any], vae_scale_factor: int, height: int, width: int,
                  dtype: torch.dtype, rows: int) -> int:
    """The UNet's activations for `rows` input rows (samples x 2 under guidance, method extras included)."""
    latent = (height // vae_scale_factor) * (width // vae_scale_factor)
    return int(UNET_FACTOR * latent * unet_config["block_out_channels"][0] * _bytes_of(dtype) * rows)


def decode_bytes(vae_config: Mapping[str, Any], height: int, width: int, dtype: torch.dtype, images: int = 1,
                 vae_parameters: int = 0) -> int:
    """The VAE decoder's peak for `images` images decoded at once (1 when sliced), with the float32 copy of its
    `vae_parameters` weights when the pipeline upcasts them."""
    decoded = decode_dtype(vae_config, dtype)
    upcast = vae_parameters * (_bytes_of(decoded) - _bytes_of(dtype))
    return int(DECODE_FACTOR * height * width * vae_config["block_out_channels"][1] * _bytes_of(decoded) * images) + upcast


def estimate(resident: int, unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], *, height: int, width: int,
             dtype: torch.dtype, guided: bool, batch: int, extra_rows: int = 0, vae_parameters: int = 0,
             sliced: bool = True) -> Estimate:
    """The peak of one batch of `batch` items (see the module's docstring)."""
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    rows = (batch + extra_rows) * (2 if guided else 1)
    return Estimate(
        batch=batch,
        resident=resident,
        denoise=denoise_bytes(unet_config, scale, height, width, dtype, rows),
        decode=decode_bytes(vae_config, height, width, dtype, 1 if sliced else batch, vae_parameters),
    )


def batch_for_memory(total_bytes: int, estimate_at: Any) -> tuple[int, Estimate]:
    """The largest of BATCH_SIZES whose estimate (`estimate_at(batch)`) leaves SPARE_BYTES of `total_bytes` free;
    1 (with its estimate) when none does."""
    for batch in BATCH_SIZES:
        est = estimate_at(batch)
        if est.total <= total_bytes - SPARE_BYTES:
            return batch, est
    return 1, estimate_at(1)


def model_estimate(model: LoadedModel, method: Any, sampler: Sampler, batch: int) -> Estimate:
    """`estimate` for the loaded model as it is now (the method attached), at the sampler's size and guidance."""
    pipe = model.pipe
    return estimate(
        resident_bytes(model), pipe.unet.config, pipe.vae.config, height=sampler.height, width=sampler.width,
        dtype=model.dtype, guided=sampler.guided, batch=batch, extra_rows=method.extra_rows(batch),
        vae_parameters=sum(p.numel() for p in pipe.vae.parameters()), sliced=bool(getattr(pipe.vae, "use_slicing", False)),
    )


def auto_batch_size(model: LoadedModel, method: Any, sampler: Sampler) -> int:
    """`engine.batch_size: auto` for `method` at `sampler`'s settings: CPU_BATCH_SIZE on the CPU; on a GPU the
    largest batch whose estimated peak fits its memory (`batch_for_memory`)."""
    if model.device.type != "cuda":
        return CPU_BATCH_SIZE
    import torch

    total = torch.cuda.get_device_properties(model.device).total_memory
    batch, est = batch_for_memory(total, lambda b: model_estimate(model, method, sampler, b))
    fits = est.total <= total - SPARE_BYTES
    (log.info if fits else log.warning)(
        "engine.batch_size auto: %d for %s at %dx%d (estimated %s; the card has %.1f GiB)%s", batch, method.name,
        sampler.width, sampler.height, est.describe(), total / GIB,
        "" if fits else ": it may not fit; lower the resolution or use a GPU with more memory",
    )
    return batch
