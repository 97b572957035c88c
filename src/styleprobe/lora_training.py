"""DreamBooth-style LoRA training on one image, with peft and diffusers' training utilities, resumable.

The recipe is B-LoRA's (yardenfren1996/B-LoRA `train_dreambooth_b-lora_sdxl.py`, as its README runs it): the image
resized and center-cropped to the training resolution, encoded by the VAE (float32), a random timestep and noise
per sample, the frozen text encoders' embedding of the instance prompt ("A [v]") with SDXL's size conditions,
the UNet's noise (or velocity) prediction against the target by mean squared error (optionally min-SNR
weighted), AdamW with gradient clipping, a diffusers learning-rate schedule. Only the LoRA weights train; they are
kept in float32 while the frozen UNet runs in the model's dtype (autocast on a GPU).

Randomness is seeded per step, not drawn from one stream: step t draws its VAE sample, timesteps and noise from a
generator seeded with (seed, t), and the LoRA's gaussian initialisation from one seeded with (seed, "init"). So a
training killed after a checkpoint and resumed makes exactly the weights of an uninterrupted one (on the CPU,
bit for bit), whatever the checkpoint interval. Checkpoints hold the LoRA weights, the optimizer and schedule
states, the losses so far and the seconds spent, written atomically.

Differences from the original, on purpose: the original samples the VAE posterior again at every step from one
global random stream (the same distribution; here the image is encoded once); its script has the center crop
commented out (a non-square image trains at its own aspect: `center_crop=false` does that); 8-bit Adam is
`optimizer=adamw_8bit` (needs bitsandbytes and a GPU); a batch of several samples repeats the one image with its
own noise and timestep each (the original's data loader yields one image however large the batch).
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("styleprobe")

OPTIMIZERS = ("adamw", "adamw_8bit")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
INITS = ("gaussian", "default")  # peft's init_lora_weights: gaussian (B-LoRA) or True (kaiming A, zero B)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained LoRA besides the base model and the image."""

    targets: tuple[str, ...]  # full names of the linear layers to adapt
    rank: int = 64
    lora_alpha: float = 64.0
    init: str = "gaussian"
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    steps: int = 1000
    batch_size: int = 1
    optimizer: str = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None
    resolution: int = 1024
    center_crop: bool = True
    instance_prompt: str = "A [v]"
    seed: int = 0


@dataclass
class Trained:
    """A finished training: the LoRA (diffusers' keys) and what it cost."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]  # the peft LoraConfig, saved as the file's metadata so loading restores lora_alpha
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def final_loss_mean(self) -> float:
        """The mean loss over the last 10% of steps (at least one): the single step's loss is noisy."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return float(sum(tail) / len(tail)) if tail else float("nan")


def step_generator(seed: int, step: int | str) -> torch.Generator:
    """A CPU generator for one step of one training (or its initialisation), independent of any other."""
    digest = hashlib.sha256(f"styleprobe-lora:{seed}:{step}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def training_image(image: Any, resolution: int, center_crop: bool) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]: resized (bilinear, short side) and center-cropped, as the original's transform."""
    from torchvision.transforms import v2

    ops = [v2.ToImage(), v2.Resize(resolution, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
    if center_crop:
        ops.append(v2.CenterCrop(resolution))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])]
    return v2.Compose(ops)(image.convert("RGB")).unsqueeze(0)


def add_lora(unet: Any, recipe: Recipe, adapter: str) -> list[torch.nn.Parameter]:
    """peft LoRA layers on exactly `recipe.targets`, initialised from the recipe's seed; their parameters (float32)."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.lora_alpha,
                        init_lora_weights="gaussian" if recipe.init == "gaussian" else True,
                        target_modules=list(recipe.targets))
    devices = [unet.device] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # other LoRAs loaded: expected
        torch.manual_seed(int(step_generator(recipe.seed, "init").initial_seed()))
        unet.add_adapter(config, adapter_name=adapter)
    unet.set_adapter(adapter)
    cast_training_params(unet, dtype=torch.float32)
    return [p for n, p in unet.named_parameters() if p.requires_grad and f".{adapter}." in n]


def _optimizer(params: list[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    kwargs = dict(lr=recipe.learning_rate, betas=(recipe.adam_beta1, recipe.adam_beta2),
                  weight_decay=recipe.adam_weight_decay, eps=recipe.adam_epsilon)
    if recipe.optimizer == "adamw_8bit":
        import bitsandbytes as bnb  # optional: only this optimizer needs it

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _conditions(pipe: Any, recipe: Recipe, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The instance prompt's embeddings and SDXL's added conditions (original size = target size, crop 0, 0)."""
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=recipe.instance_prompt, device=pipe.device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=pipe.device)
    return embeds.to(dtype), {"text_embeds": pooled.to(dtype), "time_ids": time_ids}


def train(
    pipe: Any,
    image: Any,
    recipe: Recipe,
    adapter: str,
    noise_schedule: Any,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
    gradient_checkpointing: bool = False,
    save_checkpoint: Callable[[Path, dict[str, Any]], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Trained:
    """Train a LoRA on `image` into `pipe.unet` as `adapter`, resuming from `checkpoint` if it exists.

    `noise_schedule` is the config of the model's own scheduler (the betas it was trained with), not whatever
    sampler the pipeline holds now.
    The adapter is removed from the UNet before returning (its weights are in the result), and the UNet is left
    frozen in eval mode as it was found. `save_checkpoint(path, state)` writes a checkpoint atomically.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    unet, vae, device = pipe.unet, pipe.vae, pipe.device
    dtype = unet.dtype
    pixels = training_image(image, recipe.resolution, recipe.center_crop).to(device)
    height, width = pixels.shape[-2:]
    vae_dtype = vae.dtype
    with torch.no_grad():
        if vae_dtype != torch.float32:
            vae.to(torch.float32)  # the original keeps the VAE in float32 "to avoid NaN losses"
        posterior = vae.encode(pixels.float()).latent_dist
        if vae_dtype != torch.float32:
            vae.to(vae_dtype)
    scaling = vae.config.scaling_factor
    noise_scheduler = DDPMScheduler.from_config(noise_schedule)  # the base model's training schedule
    embeds, added = _conditions(pipe, recipe, int(height), int(width), dtype)

    unet.requires_grad_(False)
    params = add_lora(unet, recipe, adapter)
    optimizer = _optimizer(params, recipe)
    schedule = get_scheduler(recipe.lr_scheduler, optimizer=optimizer, num_warmup_steps=recipe.lr_warmup_steps,
                             num_training_steps=recipe.steps)
    start, losses, spent = 0, [], 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors and numbers only
        named = dict(unet.named_parameters())
        with torch.no_grad():
            for name, value in state["lora"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, losses, spent = int(state["step"]), list(state["losses"]), float(state["seconds"])
        log.info("resuming LoRA training %s at step %d/%d", adapter, start, recipe.steps)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    autocast = device.type == "cuda" and dtype != torch.float32
    n = recipe.batch_size
    t0 = time.perf_counter()
    try:
        for step in range(start, recipe.steps):
            gen = step_generator(recipe.seed, step)
            latents = torch.cat([posterior.sample(generator=gen) for _ in range(n)]) * scaling
            noise = torch.randn(latents.shape, generator=gen).to(device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (n,), generator=gen).to(device)
            latents = latents.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps).to(dtype)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                pred = unet(noisy, timesteps, embeds.expand(n, -1, -1),
                            added_cond_kwargs={k: v.expand(n, -1) for k, v in added.items()}).sample
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else (
                noise_scheduler.get_velocity(latents, noise, timesteps))
            loss = _loss(pred.float(), target.float(), timesteps, noise_scheduler, recipe.snr_gamma)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            done = step + 1
            if progress:
                progress(done, recipe.steps, losses[-1])
            if checkpoint is not None and save_checkpoint and done % checkpoint_every == 0 and done < recipe.steps:
                lora = {name: p.detach().cpu().clone() for name, p in unet.named_parameters() if p.requires_grad}
                save_checkpoint(checkpoint, {"step": done, "lora": lora, "optimizer": optimizer.state_dict(),
                                             "schedule": schedule.state_dict(), "losses": losses,
                                             "seconds": spent + time.perf_counter() - t0})
        from styleprobe.lora import state_dict_of

        weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict_of(unet, adapter).items()}
        config = unet.peft_config[adapter].to_dict()
    finally:
        unet.eval()
        if gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            unet.delete_adapters(adapter)
        unet.requires_grad_(False)
    return Trained(weights, config, recipe.steps, spent + time.perf_counter() - t0, losses, start)


def _loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler: Any, snr_gamma: float | None) -> torch.Tensor:
    """Mean squared error, or min-SNR-gamma weighted (arXiv 2303.09556) as diffusers' DreamBooth scripts do it."""
    if snr_gamma is None:
        return torch.nn.functional.mse_loss(pred, target, reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
    if scheduler.config.prediction_type == "v_prediction":
        weights = weights + 1
    loss = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, pred.ndim)))
    return (loss * weights).mean()
