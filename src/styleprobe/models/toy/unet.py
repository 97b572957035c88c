"""The toy world's UNet: SDXL's block, module and layer names at toy width, trained text-to-image on the world.

It is trained as SDXL was: epsilon prediction on the VAE's scaled latents with the pipeline's noise schedule,
conditioned on both text encoders (frozen) and the pooled projection, captions sometimes dropped (zeros, which is
what the pipeline feeds as the unconditional prompt) so classifier-free guidance works. Captions are also
sometimes cut to content only ("a star") or style only ("something in pastel flat style"), so a prompt that
names only the content leaves the style free, which is what an image prompt then fills in. Min-SNR loss
weighting and an exponential moving average of the weights (diffusers' training utilities) make the short
CPU training count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from styleprobe.models.tiny import UNET_CONFIG as TINY_UNET_CONFIG
from styleprobe.models.toy import world
from styleprobe.models.toy.loop import optimise
from styleprobe.models.toy.pipeline import TIME_IDS, build_pipeline, encode_captions, generate

log = logging.getLogger("styleprobe")

# The tiny model's SDXL layout (DownBlock2D first, two cross-attention down blocks, three-module up blocks, 1/2/3
# transformer layers with depth, cross_attention_dim 64 = text_encoder 32 + text_encoder_2 32, six time ids + the
# 32-d pooled projection), so `down_blocks.2.attentions.1` and `up_blocks.0.attentions.1` exist with SDXL's meaning;
# at the toy VAE's 16 x 16 latents and a narrower deepest block.
UNET_CONFIG: dict[str, Any] = {
    **TINY_UNET_CONFIG,
    "sample_size": world.SIZE // 4,
    "block_out_channels": [32, 64, 64],
    "attention_head_dim": [1, 2, 2],
}


@dataclass
class UNetTraining:
    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 8e-4
    max_grad_norm: float = 1.0
    train_images: int = 12_800
    p_content_only: float = 0.1  # caption names the shape only
    p_style_only: float = 0.1  # caption names the style only
    p_unconditional: float = 0.1  # caption dropped: zeros, the pipeline's unconditional prompt
    snr_gamma: float = 5.0  # Min-SNR weighting
    ema_decay: float = 0.999
    seed: int = 20261203


def build_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def caption_table() -> tuple[list[str], dict[tuple[int, int], int]]:
    """Every caption the world has (content or -1) x (style or -1), but not neither; index 0 is left for 'none'."""
    captions, index = [], {}
    for c in range(-1, len(world.CONTENTS)):
        for s in range(-1, len(world.STYLES)):
            if c < 0 and s < 0:
                continue
            index[(c, s)] = len(captions) + 1
            captions.append(world.caption(world.CONTENTS[c] if c >= 0 else None, world.STYLES[s] if s >= 0 else None))
    return captions, index


@torch.no_grad()
def encode_latents(vae: Any, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of each image, already multiplied by the scaling factor."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        dist = vae.encode(images[i : i + batch_size]).latent_dist
        means.append(dist.mean * vae.config.scaling_factor)
        stds.append(dist.std * vae.config.scaling_factor)
    return torch.cat(means), torch.cat(stds)


def caption_embeddings(pipe: Any) -> tuple[torch.Tensor, torch.Tensor, dict[tuple[int, int], int]]:
    """Every caption's (prompt_embeds, pooled) as the pipeline encodes them, row 0 zeros (the unconditional prompt),
    and the row of each (content or -1, style or -1)."""
    captions, index = caption_table()
    embeds, pooled = encode_captions(pipe, captions)
    return torch.cat([torch.zeros_like(embeds[:1]), embeds]), torch.cat([torch.zeros_like(pooled[:1]), pooled]), index


def caption_rows(contents: np.ndarray, styles: np.ndarray, p_content_only: float, p_style_only: float, p_none: float,
                 rng: np.random.Generator, index: dict[tuple[int, int], int]) -> torch.Tensor:
    """Which caption conditions each sample: whole, content only, style only or none (row 0), drawn per sample."""
    kind = rng.choice(4, size=len(contents), p=[1 - p_content_only - p_style_only - p_none, p_content_only, p_style_only, p_none])
    rows = [0 if k == 3 else index[(c if k != 2 else -1, s if k != 1 else -1)] for k, c, s in zip(kind, contents, styles)]
    return torch.tensor(rows)


def denoising_loss(unet: Any, latents: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                   alphas_cumprod: torch.Tensor, snr_gamma: float, generator: torch.Generator,
                   **unet_kwargs: Any) -> torch.Tensor:
    """The epsilon-prediction loss at uniform random timesteps, Min-SNR weighted (shared with the adapter stage)."""
    n = len(latents)
    t = torch.randint(0, len(alphas_cumprod), (n,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    a = alphas_cumprod[t].view(n, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    time_ids = torch.tensor([TIME_IDS]).expand(n, -1)
    added = {"text_embeds": pooled, "time_ids": time_ids, **unet_kwargs.pop("added_cond_kwargs", {})}
    pred = unet(noisy, t, encoder_hidden_states=embeds, added_cond_kwargs=added, **unet_kwargs).sample
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    weight = torch.clamp(snr, max=snr_gamma) / snr
    return (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()


def train_unet(folder: Path, recipe: UNetTraining = UNetTraining(), log_every: int = 100,
               checkpoint: Path | None = None, checkpoint_every: int = 250) -> tuple[Any, Any, dict[str, Any]]:
    """Train on the world with the VAE and text encoders in `folder`; returns the EMA UNet, its pipeline, a record.

    With `checkpoint`, the whole training state (weights, EMA, optimizer, schedule, both random streams, losses,
    seconds) is written there atomically every `checkpoint_every` steps, and a training that finds it resumes from
    it: a killed run, resumed, makes the same weights as an uninterrupted one, so the stage can span sessions."""
    from diffusers.training_utils import EMAModel

    from styleprobe.disk import atomic_write

    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    unet = build_unet().train()
    pipe = build_pipeline(folder, unet)
    images, contents, styles = world.batch(world.samples(recipe.train_images, recipe.seed))
    start = time.perf_counter()
    means, stds = encode_latents(pipe.vae, torch.from_numpy(images))
    embeds, pooled, index = caption_embeddings(pipe)
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    ema = EMAModel(unet.parameters(), decay=recipe.ema_decay, use_ema_warmup=True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.05)
    losses: list[float] = []
    done, earlier_seconds = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["recipe"] != asdict(recipe):
            raise ValueError(f"{checkpoint} is a checkpoint of another UNet recipe; delete it to train this one")
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]
        generator.set_state(state["generator"])
        losses, done, earlier_seconds = list(state["losses"]), state["step"], state["seconds"]
        log.info("unet: resuming from step %d/%d (%s)", done, recipe.steps, checkpoint)
    for step in range(done + 1, recipe.steps + 1):
        idx = torch.from_numpy(rng.choice(len(means), recipe.batch_size, replace=False))
        latents = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=generator)
        rows = caption_rows(contents[idx.numpy()], styles[idx.numpy()], recipe.p_content_only, recipe.p_style_only,
                            recipe.p_unconditional, rng, index)
        loss = denoising_loss(unet, latents, embeds[rows], pooled[rows], alphas_cumprod, recipe.snr_gamma, generator)
        optimise(optimizer, schedule, loss, losses, step, recipe.steps, "unet", log_every, recipe.max_grad_norm)
        ema.step(unet.parameters())
        if checkpoint is not None and step % checkpoint_every == 0 and step < recipe.steps:
            state = {"step": step, "recipe": asdict(recipe), "unet": unet.state_dict(), "ema": ema.state_dict(),
                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "rng": rng.bit_generator.state, "generator": generator.get_state(), "losses": losses,
                     "seconds": earlier_seconds + time.perf_counter() - start}
            atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))
    ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    record = {"seconds": round(earlier_seconds + time.perf_counter() - start, 1),
              "final_loss": float(np.mean(losses[-100:])), "recipe": asdict(recipe), "config": UNET_CONFIG}
    return unet, pipe, record


def text_to_image_accuracy(pipe: Any, judge: Any, seeds_per_pair: int = 2, seed: int = 0, **sampling: Any) -> dict[str, float]:
    """The judge's content and style accuracy on images generated from every whole caption (content x style)."""
    pairs = [(c, s) for c in range(len(world.CONTENTS)) for s in range(len(world.STYLES)) for _ in range(seeds_per_pair)]
    captions = [world.caption(world.CONTENTS[c], world.STYLES[s]) for c, s in pairs]
    images = generate(pipe, captions, [seed + i for i in range(len(pairs))], **sampling)
    content, style = judge.predict(images)
    truth = np.array(pairs)
    return {"images": len(pairs), "content_accuracy": float((content == truth[:, 0]).mean()),
            "style_accuracy": float((style == truth[:, 1]).mean())}
