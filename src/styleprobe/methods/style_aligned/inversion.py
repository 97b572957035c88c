"""DDIM inversion of a real image, and the replay of its trajectory during generation.

As in StyleAligned's real-image notebook (google/style-aligned, `inversion.py`, `style_aligned_transfer_sdxl.ipynb`):
- the image (EXIF-transposed and resized to the generation size, as diffusers' `load_image(...).resize(...)`)
  is VAE-encoded in float32 (`latent_dist.mean * scaling_factor`);
- with classifier-free guidance (the caption against an all-zero unconditional embedding, SDXL's own choice
  for an empty prompt), each DDIM step is run backwards, from t - 1000/steps to t over the scheduler's
  timesteps in increasing order, with alpha(t < 0) = the scheduler's final alpha:
      x0 = (z - sqrt(1 - a_prev) eps) / sqrt(a_prev);  z_next = sqrt(a_t) x0 + sqrt(1 - a_t) eps;
- the trajectory is returned noisiest first, `zts[0] = z_T ... zts[steps] = z_0`, one latent per timestep of
  the generation's own DDIM schedule, so generation must use the same step count;
- during generation the reference sample starts from `zts[offset]` and, after step i, is set to
  `zts[max(offset + 1, i + 1)]` (`methods/reference_rows.py`, which replays any prepared trajectory).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps


def encode_image(pipe: Any, image: Image.Image, height: int, width: int) -> torch.Tensor:
    """The image's VAE latent (mean of the posterior x scaling factor), computed with the VAE in float32."""
    pixels = np.array(ImageOps.exif_transpose(image).convert("RGB").resize((width, height)))
    x = torch.from_numpy(pixels).float() / 255.0
    x = (x * 2 - 1).permute(2, 0, 1).unsqueeze(0)
    vae = pipe.vae
    dtype = vae.dtype
    vae.to(dtype=torch.float32)
    try:
        latent = vae.encode(x.to(vae.device)).latent_dist.mean * vae.config.scaling_factor
    finally:
        vae.to(dtype=dtype)
    return latent


def _text_conditioning(pipe: Any, caption: str, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """[unconditional, conditional] prompt embeddings and SDXL's added conditions for one caption."""
    device = pipe.unet.device
    embeds, _, pooled, _ = pipe.encode_prompt(caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype,
                                      pipe.text_encoder_2.config.projection_dim).to(device)
    context = torch.cat([torch.zeros_like(embeds), embeds]).to(dtype)
    added = {"text_embeds": torch.cat([torch.zeros_like(pooled), pooled]).to(dtype), "time_ids": torch.cat([time_ids, time_ids])}
    return context, added


def _next_step(scheduler: Any, noise: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """One DDIM step backwards: from the previous timestep's noise level to `timestep`'s."""
    prev = int(timestep) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    alpha_next = scheduler.alphas_cumprod[int(timestep)]
    x0 = (sample - (1 - alpha) ** 0.5 * noise) / alpha ** 0.5
    return alpha_next ** 0.5 * x0 + (1 - alpha_next) ** 0.5 * noise


@torch.no_grad()
def ddim_invert(pipe: Any, image: Image.Image, caption: str, steps: int, guidance: float, height: int, width: int,
                progress: Any = None) -> tuple[torch.Tensor, float]:
    """The DDIM trajectory of `image` (steps + 1 latents, noisiest first) and the seconds it took.

    `pipe.scheduler` must be a DDIM scheduler (its timesteps are set to `steps` here); the UNet must run plain
    attention (no method's processors sharing anything).
    """
    start = time.perf_counter()
    scheduler, unet = pipe.scheduler, pipe.unet
    latent = encode_image(pipe, image, height, width).to(unet.device, unet.dtype)
    scheduler.set_timesteps(steps, device=latent.device)
    context, added = _text_conditioning(pipe, caption, height, width, unet.dtype)
    trajectory = [latent]
    for i in range(scheduler.num_inference_steps):
        t = scheduler.timesteps[len(scheduler.timesteps) - i - 1]
        noise = unet(torch.cat([latent] * 2), t, encoder_hidden_states=context, added_cond_kwargs=added)["sample"]
        uncond, cond = noise.chunk(2)
        latent = _next_step(scheduler, uncond + guidance * (cond - uncond), t, latent)
        trajectory.append(latent)
        if progress is not None:
            progress(i + 1, steps)
    return torch.cat(trajectory).flip(0), time.perf_counter() - start

