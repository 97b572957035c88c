"""DreamBooth-style LoRA training on one image, with peft and diffusers' training utilities, resumable.

The recipe is B-LoRA's (yardenfren1996/B-LoRA `train_dreambooth_b-lora_sdxl.py`, as its README runs it): the image
resized and center-cropped to the training resolution, encoded by the VAE (float32), a random timestep and noise
per sample, the frozen text encoders' embedding of the instance prompt ("A [v]") with SDXL's size conditions,
the UNet's noise (or velocity) prediction against the target by mean squared error (optionally min-SNR
weighted), AdamW with gradient clipping, a diffusers learning-rate schedule. Only the LoRA weights train; they are
kept in float32 (and initialised in float32, whatever the model's dtype) while the frozen UNet runs in the model's
dtype.

Precision follows the original, which trains under accelerate's mixed precision (`--mixed_precision=fp16` in its
README command, with the UNet cast to that dtype): `mixed_precision=fp16` runs the forward pass under float16
autocast and scales the loss with a `torch.amp.GradScaler` (gradients unscaled before clipping; a step whose
gradients hold inf or nan is skipped, the scale halved and the learning-rate schedule not advanced, as accelerate
does), so gradients of this loss (around 1e-5 on SDXL) do not underflow float16; `bf16` runs under bfloat16 autocast
(float32's range: no scaler); `no` runs the UNet in its own dtype. `auto` is the original's coupling of the two:
the precision of the model's dtype (float16 -> fp16, bfloat16 -> bf16, float32 -> no), i.e. fp16 with loss scaling
on a GPU and full precision on the CPU with styleprobe's default dtypes. `no` on a float16 model is refused (its
gradients would underflow).

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

import dataclasses
import hashlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from styleprobe.errors import ConfigError

log = logging.getLogger("styleprobe")

OPTIMIZERS = ("adamw", "adamw_8bit")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
#: The mixed precision `auto` picks for a model dtype: the original's (accelerate casts the UNet to that dtype).
AUTO_PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float32": "no"}
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
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
    mixed_precision: str = "no"  # resolved (no | fp16 | bf16): see `resolve_mixed_precision`


def resolve_mixed_precision(knob: str, dtype: str, where: str) -> str:
    """The precision a LoRA trains in on a model of `dtype` (a name: float32, float16, bfloat16); `auto` as the original."""
    mode = AUTO_PRECISION.get(dtype, "no") if knob == "auto" else knob
    if mode == "no" and dtype == "float16":
        raise ConfigError(f"{where}=no on a float16 model trains on unscaled float16 gradients, which underflow; use "
                          f"auto or fp16 (loss scaling), bf16, or model.dtype=float32")
    return mode


def recipe_identity(recipe: Recipe, dtype: str) -> dict[str, Any]:
    """The recipe as a LoRA's key holds it: the precision only where it changes the weights.

    Plain float32 training (a float32 model, no autocast) is how every LoRA trained before the knob existed, so it
    keeps those keys; any other precision (autocast, or a half-precision model) is part of the key.
    """
    fields = dataclasses.asdict(recipe)
    if recipe.mixed_precision == "no" and dtype == "float32":
        del fields["mixed_precision"]
    return fields


def grad_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of a precision: accelerate's defaults for fp16, a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=mode == "fp16")


@dataclass
class Trained:
    """A finished training: the LoRA (diffusers' keys) and what it cost."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]  # the peft LoraConfig, saved as the file's metadata so loading restores lora_alpha
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    grad_norms: list[float] = field(default_factory=list)  # each step's gradient norm (unscaled, before clipping)
    skipped_steps: list[int] = field(default_factory=list)  # steps the loss scaler skipped (inf or nan gradients)
    loss_scale: float | None = None  # the scaler's final scale (None: no scaler)

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


def _base_layer(unet: Any, name: str) -> torch.nn.Module:
    """The linear layer `name` names, inside its peft wrapper if other adapters are loaded there."""
    module = unet.get_submodule(name)
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def add_lora(unet: Any, recipe: Recipe, adapter: str) -> list[torch.nn.Parameter]:
    """peft LoRA layers on exactly `recipe.targets`, initialised from the recipe's seed; their parameters (float32).

    peft creates a LoRA in its base layer's dtype, so on a half-precision UNet its initial weights would be rounded
    to that precision; the target layers are float32 while it is created (and cast back after, exactly), so the
    initial LoRA is the float32 one on every model, as the original's (LoRA layers made in float32).
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.lora_alpha,
                        init_lora_weights="gaussian" if recipe.init == "gaussian" else True,
                        target_modules=list(recipe.targets))
    dtypes = {name: _base_layer(unet, name).weight.dtype for name in recipe.targets}
    devices = [unet.device] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # other LoRAs loaded: expected
        for name in recipe.targets:
            _base_layer(unet, name).to(torch.float32)
        torch.manual_seed(int(step_generator(recipe.seed, "init").initial_seed()))
        try:
            unet.add_adapter(config, adapter_name=adapter)
        finally:
            for name, dtype in dtypes.items():
                _base_layer(unet, name).to(dtype)
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
    mode = recipe.mixed_precision
    scaler = grad_scaler(mode, device)
    start, losses, norms, skipped, spent = 0, [], [], [], 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors and numbers only
        named = dict(unet.named_parameters())
        with torch.no_grad():
            for name, value in state["lora"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, losses, spent = int(state["step"]), list(state["losses"]), float(state["seconds"])
        norms, skipped = list(state.get("grad_norms", [])), list(state.get("skipped_steps", []))
        log.info("resuming LoRA training %s at step %d/%d", adapter, start, recipe.steps)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
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
            with torch.autocast(device.type, dtype=AUTOCAST.get(mode, dtype), enabled=mode in AUTOCAST):
                pred = unet(noisy, timesteps, embeds.expand(n, -1, -1),
                            added_cond_kwargs={k: v.expand(n, -1) for k, v in added.items()}).sample
            target = noise if noise_scheduler.config.prediction_type == "epsilon" else (
                noise_scheduler.get_velocity(latents, noise, timesteps))
            loss = _loss(pred.float(), target.float(), timesteps, noise_scheduler, recipe.snr_gamma)
            norm, stepped = optimizer_step(loss, params, optimizer, scaler, recipe.max_grad_norm)
            if stepped:
                schedule.step()
            else:
                skipped.append(step)
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            norms.append(norm)
            done = step + 1
            if progress:
                progress(done, recipe.steps, losses[-1])
            if checkpoint is not None and save_checkpoint and done % checkpoint_every == 0 and done < recipe.steps:
                lora = {name: p.detach().cpu().clone() for name, p in unet.named_parameters() if p.requires_grad}
                save_checkpoint(checkpoint, {"step": done, "lora": lora, "optimizer": optimizer.state_dict(),
                                             "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                                             "losses": losses, "grad_norms": norms, "skipped_steps": skipped,
                                             "seconds": spent + time.perf_counter() - t0})
        from styleprobe.methods.b_lora.lora import state_dict_of

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
    return Trained(weights, config, recipe.steps, spent + time.perf_counter() - t0, losses, start, norms, skipped,
                   scaler.get_scale() if scaler.is_enabled() else None)


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, max_grad_norm: float) -> tuple[float, bool]:
    """Backward, clip and step as accelerate does under mixed precision: (the unscaled gradient norm, whether stepped).

    The loss is multiplied by the scaler's scale before backward and the gradients divided by it before clipping;
    the scaler skips the optimizer step when they hold inf or nan, and lowers its scale exactly then.
    """
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return norm, not scaler.get_scale() < before


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
