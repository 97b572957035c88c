"""The generation engine: pending work items -> batched pipeline calls -> the store.

Items that differ only in injection pattern, adapter scale, subtraction strength, reference, prompt or
seed share one batched call: per-sample layer scales go to styleprobe's attn2 processors, per-sample
adapter inputs (with content subtraction applied) and prompt embeddings go to the pipeline as
precomputed embeddings, and each sample gets its own CPU generator seeded with its seed, so its initial
noise, and with it the image, do not depend on what else shares the batch or on the device.
Each reference image, content label and prompt is encoded once per process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from styleprobe.models import LoadedModel
from styleprobe.plan import Sampler, WorkItem
from styleprobe.store import Store
from styleprobe.subtraction import adapter_inputs, encode_content, encode_references, subtract

log = logging.getLogger(__name__)


@contextmanager
def per_sample_adapter_inputs(pipe: Any, embeds: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Give each sample of a pipeline call its own adapter input.

    diffusers' pipelines treat `ip_adapter_image_embeds` as one reference for the whole call and repeat it
    batch-size times; styleprobe's batches mix references and subtraction strengths, so for the duration of
    the call the pipeline takes the (2B, 1, dim) tensor as it is.
    """
    pipe.prepare_ip_adapter_image_embeds = lambda *args, **kwargs: [e.to(pipe.device) for e in embeds]
    try:
        yield embeds
    finally:
        del pipe.prepare_ip_adapter_image_embeds


@dataclass
class EncodingCache:
    """Reference, content and prompt encodings of one model, computed once."""

    references: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    contents: dict[str, torch.Tensor] = field(default_factory=dict)
    prompts: dict[tuple[str, str], tuple[torch.Tensor, ...]] = field(default_factory=dict)


@dataclass
class EngineStats:
    generated: int = 0
    batches: int = 0
    seconds: float = 0.0


class Engine:
    """Generates images for work items with one loaded model."""

    def __init__(self, model: LoadedModel, sampler: Sampler, batch_size: int = 8):
        self.model = model
        self.sampler = sampler
        self.batch_size = max(1, int(batch_size))
        self.cache = EncodingCache()
        self.state = model.pipe.unet.styleprobe_state
        self._set_scheduler(sampler.scheduler)

    def _set_scheduler(self, name: str) -> None:
        import diffusers

        default = self.model.default_scheduler
        if name == "default":
            self.model.pipe.scheduler = default
        else:
            self.model.pipe.scheduler = getattr(diffusers, name).from_config(default.config)

    @property
    def guidance(self) -> bool:
        return self.sampler.guidance > 1.0

    # encodings ---------------------------------------------------------------------------------
    def _reference(self, item: WorkItem) -> tuple[torch.Tensor, torch.Tensor]:
        key = item.reference.digest
        if key not in self.cache.references:
            cond, uncond = encode_references(self.model, [item.reference.load()])
            self.cache.references[key] = (cond[0], uncond[0])
        return self.cache.references[key]

    def _content(self, text: str) -> torch.Tensor:
        if text not in self.cache.contents:
            self.cache.contents[text] = encode_content(self.model, [text])[0]
        return self.cache.contents[text]

    def _prompt(self, prompt: str) -> tuple[torch.Tensor, ...]:
        key = (prompt, self.sampler.negative_prompt)
        if key not in self.cache.prompts:
            out = self.model.pipe.encode_prompt(
                prompt=[prompt],
                device=self.model.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=self.guidance,
                negative_prompt=[self.sampler.negative_prompt] if self.sampler.negative_prompt else None,
            )
            self.cache.prompts[key] = tuple(t[0] if t is not None else None for t in out)
        return self.cache.prompts[key]

    # batches -----------------------------------------------------------------------------------
    def adapter_embeds(self, items: Sequence[WorkItem]) -> list[torch.Tensor]:
        """Per-sample adapter inputs: reference embedding minus s x content embedding (cond half only)."""
        refs = [self._reference(it) for it in items]
        cond = torch.stack([r[0] for r in refs])
        uncond = torch.stack([r[1] for r in refs])
        strengths = torch.tensor([it.subtraction for it in items])
        if bool(torch.any(strengths != 0)):
            text = torch.stack([self._content(it.reference.content) for it in items])
            cond = subtract(cond, text, strengths)
        return adapter_inputs(cond, uncond, self.guidance)

    def layer_scales(self, items: Sequence[WorkItem]) -> torch.Tensor:
        """(batch, n_layers): each item's pattern times its adapter scale."""
        return torch.tensor([[s * it.scale for s in it.pattern.scales] for it in items], dtype=torch.float32)

    def prompt_kwargs(self, items: Sequence[WorkItem]) -> dict[str, torch.Tensor]:
        encoded = [self._prompt(it.prompt.prompt) for it in items]
        names = (
            ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
            if self.model.spec.family == "sdxl"
            else ["prompt_embeds", "negative_prompt_embeds"]
        )
        return {
            name: torch.stack([e[i] for e in encoded])
            for i, name in enumerate(names)
            if encoded[0][i] is not None
        }

    def run_batch(self, items: Sequence[WorkItem]) -> list[Image.Image]:
        """One pipeline call for a batch of items; returns their images in order."""
        generators = [torch.Generator("cpu").manual_seed(int(it.seed)) for it in items]
        pipe = self.model.pipe
        with (
            torch.inference_mode(),
            self.state.use(self.layer_scales(items)),
            per_sample_adapter_inputs(pipe, self.adapter_embeds(items)) as embeds,
        ):
            out = pipe(
                **self.prompt_kwargs(items),
                ip_adapter_image_embeds=embeds,
                generator=generators,
                num_inference_steps=self.sampler.steps,
                guidance_scale=self.sampler.guidance,
                height=self.sampler.height,
                width=self.sampler.width,
                output_type="pil",
            )
        return list(out.images)

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
        ordered = sorted(items, key=lambda it: (it.reference.digest, it.prompt.prompt, it.seed, it.key))
        for b in range(0, len(ordered), self.batch_size):
            batch = ordered[b : b + self.batch_size]
            images = self.run_batch(batch)
            store.write_batch([dict(it.row) for it in batch], images, run_id, stats.batches)
            stats.batches += 1
            stats.generated += len(batch)
            if on_batch:
                on_batch(stats.generated, len(ordered))
        stats.seconds = time.perf_counter() - start
        return stats
