"""The toy world's trained parts put together as a diffusers StableDiffusionXLPipeline.

Training stages use it to encode captions exactly as generation will (`encode_prompt`: both encoders' penultimate
hidden states side by side, `text_encoder_2`'s projection as the pooled embedding, zeros as the unconditional
prompt), and to sample from a UNet for their held-out checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: Micro-conditioning of every toy image: original size, crop corner, target size (SDXL's six `time_ids`).
TIME_IDS = (64.0, 64.0, 0.0, 0.0, 64.0, 64.0)


def scheduler() -> Any:
    """SDXL base's scheduler (Euler, scaled-linear betas, epsilon prediction); training noises with its betas."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                  prediction_type="epsilon")


def load_half(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load float16 safetensors written by the training script into a float32 module, in eval mode."""
    from safetensors.torch import load_file

    module.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return module.eval().requires_grad_(False)


def load_towers(folder: Path) -> dict[str, Any]:
    """The trained text encoders, image encoder and tokenizers (float32, frozen)."""
    from styleprobe.models.toy import clip

    towers = clip.build()
    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        load_half(towers[name], folder / f"{name}.safetensors")
    return towers


def build_pipeline(folder: Path, unet: Any) -> Any:
    """A StableDiffusionXLPipeline from the trained VAE and towers in `folder` and the given UNet."""
    from diffusers import StableDiffusionXLPipeline

    from styleprobe.models.toy import vae
    from styleprobe.models.toy.weights import records

    towers = load_towers(folder)
    pipe = StableDiffusionXLPipeline(
        vae=vae.load_vae(folder / "vae.safetensors", records(folder)["vae"]["scaling_factor"]),
        text_encoder=towers["text_encoder"], text_encoder_2=towers["text_encoder_2"],
        tokenizer=towers["tokenizer"], tokenizer_2=towers["tokenizer_2"], unet=unet, scheduler=scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode_captions(pipe: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled_prompt_embeds) of each caption, as the pipeline computes them for generation."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, device="cpu", do_classifier_free_guidance=False)
    return embeds, pooled


@torch.no_grad()
def generate(pipe: Any, captions: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0,
             batch_size: int = 64, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, 64, 64), one per caption and seed, each from its own seeded generator; with
    `image_embeds` (N, dim), each image is also prompted by its own row through the loaded IP-Adapter (zeros as the
    unconditional image, as the pipeline makes them), passed per sample as styleprobe's engine does."""
    from contextlib import nullcontext

    from styleprobe.methods.ip_adapter.injection import per_sample_adapter_inputs

    out = []
    for i in range(0, len(captions), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
        embeds = None
        if image_embeds is not None:
            cond = image_embeds[i : i + batch_size, None, :]
            embeds = [torch.cat([torch.zeros_like(cond), cond]) if guidance > 1 else cond]
        with nullcontext() if embeds is None else per_sample_adapter_inputs(pipe, embeds):
            images = pipe(prompt=captions[i : i + batch_size], generator=generators, num_inference_steps=steps,
                          guidance_scale=guidance, height=64, width=64, output_type="pt",
                          ip_adapter_image_embeds=embeds).images
        out.append(images * 2 - 1)
    return torch.cat(out)
