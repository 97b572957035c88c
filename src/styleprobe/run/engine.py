"""The generation engine: pending work items -> batched pipeline calls -> the store, for every method alike.

Items are grouped by method entry, sampler and the method's batch key, and ordered so that a batch shares
references and prompts. For each group the engine sets the pipeline up for the method (`activate`, after
`deactivate` of whichever ran before), sets the scheduler, lets the method prepare its per-reference work
(`prepare`) and then runs batches through `Method.run_batch`. Methods build their calls with the engine's
helpers: prompt embeddings encoded once per process, each sample's initial noise from its own CPU generator
seeded with its seed (so an image does not depend on what else shares its batch, nor on the device), and one
`denoise` call of the pipeline. `batch_size=None` (auto) sizes each method's batches from the model's memory
(`styleprobe.models.memory`); a batch that runs out of device memory is halved and retried, and the smaller size is kept
for the rest of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from styleprobe.errors import StyleprobeError
from styleprobe.methods.base import registry
from styleprobe.models.devices import peak_memory, reset_peak_memory
from styleprobe.models.loading import LoadedModel
from styleprobe.run.plan import WorkItem
from styleprobe.run.sampler import Sampler
from styleprobe.run.store import Store

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    generated: int = 0
    batches: int = 0
    seconds: float = 0.0
    prepare_seconds: dict[str, float] = field(default_factory=dict)  # method entry -> per-reference work
    generate_seconds: dict[str, float] = field(default_factory=dict)  # method entry -> its batches
    generated_by: dict[str, int] = field(default_factory=dict)  # method entry -> images
    prepared: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # method entry -> its preparation records
    peak_gpu_bytes: int | None = None  # the job's peak over preparation and generation (None on the CPU)

    def note_peak(self, peak: int | None) -> None:
        if peak is not None:
            self.peak_gpu_bytes = max(peak, self.peak_gpu_bytes or 0)


def batch_order(items: Sequence[WorkItem]) -> list[list[WorkItem]]:
    """Items grouped into runs that may share a pipeline call: same entry, sampler and batch key.

    Within a group items are ordered by reference, prompt and seed, so each batch holds few references.
    """
    entries = list(dict.fromkeys(it.entry.name for it in items))
    groups: dict[tuple[Any, ...], list[WorkItem]] = {}
    for it in items:
        window = it.window.name if it.method.window_support == "per_batch" else ""  # such a call holds one window
        group = (entries.index(it.entry.name), repr(it.sampler), repr(it.method.batch_key(it)), window)
        groups.setdefault(group, []).append(it)
    return [
        sorted(group, key=lambda it: (it.reference.digest, it.prompt.prompt, it.seed, it.key))
        for _, group in sorted(groups.items(), key=lambda kv: kv[0])
    ]


class Engine:
    """Generates images for work items with one loaded model."""

    def __init__(self, model: LoadedModel, batch_size: int | None = 8, output_type: str = "pil"):
        self.model = model
        self.batch_size = None if batch_size is None else max(1, int(batch_size))  # None: auto, per method (memory.py)
        self.limit: int | None = None  # after an out-of-memory error: the largest batch for the rest of the run
        self._auto: dict[tuple[str, str], int] = {}  # (method, sampler) -> auto batch size
        self.output_type = output_type  # "pil" for the store; "latent" or "np" to inspect a method's outputs
        self._windowed: Sequence[WorkItem] | None = None  # the batch in `run_batch` when it holds windows

    # the pipeline's state ------------------------------------------------------------------------------
    def use(self, method: Any, sampler: Sampler) -> None:
        """Set the pipeline up for `method` (others stand down first) with `sampler`'s scheduler."""
        if self.model.active != method.name:
            for other in list(self.model.attached):
                if other != method.name:
                    registry()[other]().deactivate(self.model)
            self.model.active = method.name
        method.activate(self.model)
        self._set_scheduler(sampler)

    def _set_scheduler(self, sampler: Sampler) -> None:
        import diffusers

        default = self.model.default_scheduler
        if sampler.scheduler == "default":
            self.model.pipe.scheduler = default
        else:
            cls = getattr(diffusers, sampler.scheduler)
            self.model.pipe.scheduler = cls.from_config(default.config, **dict(sampler.scheduler_options))

    # helpers for methods ---------------------------------------------------------------------------------
    def _prompt(self, text: str, sampler: Sampler) -> tuple[torch.Tensor | None, ...]:
        key = (text, sampler.negative_prompt, sampler.guided)
        if key not in self.model.prompts:
            with torch.inference_mode():
                out = self.model.pipe.encode_prompt(
                    prompt=[text],
                    device=self.model.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=sampler.guided,
                    negative_prompt=[sampler.negative_prompt] if sampler.negative_prompt else None,
                )
            self.model.prompts[key] = tuple(t[0] if t is not None else None for t in out)
        return self.model.prompts[key]

    def prompt_embeds(self, texts: Sequence[str], sampler: Sampler) -> dict[str, torch.Tensor]:
        """The pipeline's prompt-embedding arguments for one prompt per sample (each encoded once per process)."""
        encoded = [self._prompt(t, sampler) for t in texts]
        names = (
            ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
            if self.model.spec.family == "sdxl"
            else ["prompt_embeds", "negative_prompt_embeds"]
        )
        return {name: torch.stack([e[i] for e in encoded]) for i, name in enumerate(names) if encoded[0][i] is not None}

    def noise(self, seeds: Sequence[int], sampler: Sampler) -> torch.Tensor:
        """Each sample's initial latents from its own CPU generator: the draws the pipeline itself would make."""
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.model.pipe
        shape = (len(seeds), pipe.unet.config.in_channels, sampler.height // pipe.vae_scale_factor,
                 sampler.width // pipe.vae_scale_factor)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        return randn_tensor(shape, generator=generators, device=self.model.device, dtype=self.model.dtype)

    def denoise(self, sampler: Sampler, prompts: Sequence[str], latents: torch.Tensor, **kwargs: Any) -> list[Image.Image]:
        """One pipeline call: one prompt and one initial latent per sample; extra pipeline arguments as given.

        Inside `run_batch` of items with denoising windows, the method's `at_step` switches each item's pattern on
        and off as the steps enter and leave its window (before the first step, then from diffusers' step callback,
        ahead of any callback the method passes).
        """
        kwargs = self._switching_windows(sampler, kwargs)
        with torch.inference_mode():
            out = self.model.pipe(
                **self.prompt_embeds(prompts, sampler),
                latents=latents,
                num_inference_steps=sampler.steps,
                guidance_scale=sampler.guidance,
                height=sampler.height,
                width=sampler.width,
                output_type=self.output_type,
                **kwargs,
            )
        return list(out.images)

    # running ---------------------------------------------------------------------------------------------
    def size_for(self, method: Any, sampler: Sampler) -> int:
        """The batch size for a method's group: the configured one, or (auto) the model's memory's once the method
        is attached, decided once per method and sampler. The engine's loop caps it at `limit`."""
        from styleprobe.models.memory import auto_batch_size

        if self.batch_size is not None:
            return self.batch_size
        key = (method.name, repr(sampler))
        if key not in self._auto:
            self._auto[key] = auto_batch_size(self.model, method, sampler)
        return self._auto[key]

    def halve(self, size: int) -> None:
        """After an out-of-memory error at `size`: half of it for the rest of the run; at 1, the error and its fix.
        A VAE the pipeline upcast to float32 for its decode goes back to the model's dtype (diffusers casts it back
        only after a decode that finished)."""
        vae = self.model.pipe.vae
        if vae.dtype != self.model.dtype:
            vae.to(dtype=self.model.dtype)
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        if size <= 1:
            raise StyleprobeError(
                f"out of memory on {self.model.device} at batch size 1 ({self.model.spec.name}): lower the resolution "
                "(sampler.height / sampler.width), free the GPU of other processes, or use one with more memory "
                "(engine.device=cuda:<index>)")
        self.limit = size // 2
        log.warning("out of memory on %s at batch size %d: batch size %d from now on in this run", self.model.device,
                    size, self.limit)

    def _switching_windows(self, sampler: Sampler, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The pipeline arguments with the step callback that moves the batch's items in and out of their windows."""
        items = self._windowed
        if not items:
            return kwargs
        method, n = items[0].method, sampler.steps
        steps = [it.window.steps(n) for it in items]
        masks = [[step in s for s in steps] for step in range(n)]
        after = kwargs.get("callback_on_step_end")

        def switch_windows(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if pipe.num_timesteps != n:
                raise StyleprobeError(
                    f"denoising windows count the sampler's {n} steps, but {type(pipe.scheduler).__name__} runs "
                    f"{pipe.num_timesteps} UNet steps; use a scheduler with one step per timestep (e.g. "
                    f"EulerDiscreteScheduler, DDIMScheduler) or windows=[full]")
            if step + 1 < n and masks[step + 1] != masks[step]:
                method.at_step(self, items, masks[step + 1])
            return after(pipe, step, timestep, callback_kwargs) if after is not None else {}

        method.at_step(self, items, masks[0])
        return {**kwargs, "callback_on_step_end": switch_windows}

    def run_batch(self, items: Sequence[WorkItem]) -> list[Image.Image]:
        """One pipeline call for items of one group (see `batch_order`); their images in order."""
        self.use(items[0].method, items[0].sampler)
        self._windowed = items if any(not it.window.full for it in items) else None
        try:
            return items[0].method.run_batch(self, items)
        finally:
            self._windowed = None

    def generate(
        self,
        items: Sequence[WorkItem],
        store: Store,
        run_id: str,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> EngineStats:
        """Generate every item, writing each batch to the store as soon as it is done."""
        stats = EngineStats()
        start = time.perf_counter()
        groups = batch_order(items)
        total = sum(len(g) for g in groups)
        prepared: set[str] = set()
        for group in groups:
            entry, method = group[0].entry, group[0].method
            self.use(method, group[0].sampler)
            if entry.name not in prepared:  # once per entry, for all of its pending items
                t0 = time.perf_counter()
                reset_peak_memory(self.model.device)
                stats.prepared[entry.name] = method.prepare(self, [it for it in items if it.entry.name == entry.name], store) or []
                stats.prepare_seconds[entry.name] = time.perf_counter() - t0
                stats.note_peak(peak_memory(self.model.device))
                prepared.add(entry.name)
            size, b = self.size_for(method, group[0].sampler), 0
            while b < len(group):
                batch = group[b : b + min(size, self.limit or size)]
                t0 = time.perf_counter()
                reset_peak_memory(self.model.device)
                try:
                    images = self.run_batch(batch)
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not out_of_memory(err):
                        raise
                    images = None
                if images is None:  # out of the handler: the error's frames, holding the batch's tensors, are freed
                    self.halve(len(batch))
                    continue
                b += len(batch)
                seconds, peak = time.perf_counter() - t0, peak_memory(self.model.device)
                stats.note_peak(peak)
                # each row carries what its image cost: the batch's seconds shared out, the batch's peak memory, and
                # the share of the call's UNet samples that were not images (reference and negative rows)
                extra = round(1.0 - len(batch) / max(method.pipeline_rows(batch), len(batch)), 5)
                rows = [{**it.row, "seconds": round(seconds / len(batch), 5), "peak_gpu_bytes": peak,
                         "extra_row_share": extra} for it in batch]
                store.write_batch(rows, images, run_id, stats.batches)
                stats.generate_seconds[entry.name] = stats.generate_seconds.get(entry.name, 0.0) + seconds
                stats.generated_by[entry.name] = stats.generated_by.get(entry.name, 0) + len(batch)
                stats.batches += 1
                stats.generated += len(batch)
                if on_batch:
                    on_batch(stats.generated, total)
        stats.seconds = time.perf_counter() - start
        return stats


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is the device running out of memory: torch's OutOfMemoryError, or the RuntimeError form
    ("CUDA out of memory", "CUDA error: out of memory", MPS's "out of memory") some kernels raise."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err)
