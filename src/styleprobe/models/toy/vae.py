"""The toy world's VAE: diffusers' AutoencoderKL, small, trained to reconstruct the world's 64 px images.

Three encoder blocks make 16 x 16 x 4 latents (SDXL: 128 x 128 x 4 from 1024 px), enough to keep every style's
texture (hatching, dots, checks, mosaic). The scaling factor is measured on the data, as Stable Diffusion's was
(one over the latents' standard deviation), so the UNet sees unit-variance latents.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from styleprobe.models.toy import world
from styleprobe.models.toy.loop import optimise

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": world.SIZE,
}


@dataclass
class VAETraining:
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-3
    kl_weight: float = 1e-6
    train_images: int = 12_800
    seed: int = 20261201


def build_vae(scaling_factor: float = 1.0) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG, scaling_factor=scaling_factor)


def train_vae(recipe: VAETraining = VAETraining(), log_every: int = 100) -> tuple[Any, dict[str, Any]]:
    """Train on freshly drawn world images: L1 + MSE reconstruction, a small KL term; then measure the scaling."""
    torch.manual_seed(recipe.seed)
    images = torch.from_numpy(world.batch(world.samples(recipe.train_images, recipe.seed))[0])
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(recipe.seed)
    start, losses = time.perf_counter(), []
    vae.train()
    for step in range(1, recipe.steps + 1):
        x = images[torch.randint(0, len(images), (recipe.batch_size,), generator=generator)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + recipe.kl_weight * posterior.kl().mean()
        optimise(optimizer, schedule, loss, losses, step, recipe.steps, "vae", log_every)
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, min(2048, len(images)), 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    record = {"seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-50:])),
              "scaling_factor": scaling, "recipe": asdict(recipe), "config": VAE_CONFIG}
    return vae, record


@torch.no_grad()
def reconstruct(vae: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Encode (posterior mean) and decode, as the pipeline's round trip does; images in [-1, 1]."""
    out = [vae.decode(vae.encode(images[i : i + batch_size]).latent_dist.mean).sample for i in range(0, len(images), batch_size)]
    return torch.cat(out).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1]."""
    mse = float(((a - b) / 2).pow(2).mean())
    return 10 * float(np.log10(1.0 / max(mse, 1e-12)))


def load_vae(path: Any = None, scaling_factor: float | None = None) -> Any:
    """The shipped VAE (or the one at `path`) in float32, with the scaling factor its training measured."""
    from safetensors.torch import load_file

    from styleprobe.models.toy.weights import records, weight_path

    scaling = scaling_factor if scaling_factor is not None else records()["vae"]["scaling_factor"]
    vae = build_vae(scaling)
    vae.load_state_dict({k: v.float() for k, v in load_file(str(path or weight_path("vae"))).items()})
    return vae.eval()
