"""A real reference image as Visual Style Prompting's reference row: noised to every step, never inverted.

The real-image script (vsp_real_script.py with `image=`; `prepare_img_latents` in
pipelines/pipeline_stable_diffusion_xl.py) sets the reference row, before every UNet call, to the image's latent
noised to that step's timestep: a fresh sample of the VAE posterior (`retrieve_latents(..., generator)`, the
"stochastic encoding" StyleKeeper describes) times the scaling factor, then `scheduler.add_noise` with fresh noise.
Here the image is encoded once (the posterior's mean and std) and the per-step draws come, in the original's order
(posterior sample, then noise, for each step), from one CPU generator seeded with the knob `reference_seed`,
so the trajectory is reproducible and kept as a keyed artefact: `zts[i]` is the row's latent at step i,
`zts[steps]` the posterior mean's latent (the clean image). The reference rows replay it through
`methods/reference_rows.py` (start from zts[0], after step i take zts[i + 1]).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image, ImageOps


def posterior(pipe: Any, image: Image.Image, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std for `image` resized (bicubic, as the script) to the generation size.

    The VAE runs in float32 when its config asks to be upcast (diffusers' `force_upcast`), as the original does.
    """
    image = ImageOps.exif_transpose(image).convert("RGB").resize((width, height), resample=Image.BICUBIC)
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image)
    dtype = vae.dtype
    upcast = bool(getattr(vae.config, "force_upcast", False)) and dtype != torch.float32
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()
    finally:
        if upcast:
            vae.to(dtype=dtype)


@torch.no_grad()
def noised_trajectory(pipe: Any, image: Image.Image, steps: int, height: int, width: int,
                      seed: int) -> tuple[torch.Tensor, float]:
    """The reference row's latent at each of `steps` steps of the pipeline's scheduler, and the clean latent last."""
    from diffusers.utils.torch_utils import randn_tensor

    start = time.perf_counter()
    mean, std = posterior(pipe, image, height, width)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=mean.device)
    scale = pipe.vae.config.scaling_factor
    generator = torch.Generator("cpu").manual_seed(int(seed))
    out = []
    for t in scheduler.timesteps:
        draw = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z0 = scale * (mean + std * draw)
        noise = randn_tensor(z0.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        out.append(scheduler.add_noise(z0, noise, t.reshape(1)))
    out.append(scale * mean)
    return torch.cat(out), time.perf_counter() - start
