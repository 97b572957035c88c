"""The toy world's IP-Adapter: image projection plus `to_k_ip` / `to_v_ip` per cross-attention layer, trained on
the frozen UNet as IP-Adapter was trained.

The adapter is diffusers' own inference module (`ImageProjection` and `IPAdapterAttnProcessor2_0`, attached by
`_load_ip_adapter_weights` from a checkpoint in h94's key format whose `to_k_ip` / `to_v_ip` start as the layer's
own `to_k` / `to_v`, as in IP-Adapter's training), so what is trained is exactly what generation runs. The
reference image is the training image itself, as in IP-Adapter; the caption beside it is often cut to content
only, style only or nothing, so the image has to carry what the text leaves out, and sometimes the image is
dropped (zeros, the pipeline's unconditional image). Saved back in h94's format, it loads through
`load_ip_adapter` like the real checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from styleprobe.models.toy import clip, world
from styleprobe.models.toy.loop import optimise
from styleprobe.models.toy.pipeline import build_pipeline, generate, load_half, load_towers

NUM_TOKENS = 4  # image tokens the projection makes (h94's SDXL global adapter: 4)


@dataclass
class AdapterTraining:
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    max_grad_norm: float = 1.0
    train_images: int = 12_800
    p_content_only: float = 0.35
    p_style_only: float = 0.1
    p_no_text: float = 0.3
    p_no_image: float = 0.1
    snr_gamma: float = 5.0
    seed: int = 20261204


def initial_state(unet: Any, image_embed_dim: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """An untrained checkpoint in h94's key format: a fresh projection, `to_k_ip` / `to_v_ip` copied from the
    layer's `to_k` / `to_v`, keyed by the layer's index in `unet.attn_processors` (as diffusers converts it)."""
    cross = unet.config.cross_attention_dim
    linear = torch.nn.Linear(image_embed_dim, NUM_TOKENS * cross)
    torch.nn.init.normal_(linear.weight, std=image_embed_dim**-0.5, generator=generator)
    state = {"image_proj.proj.weight": linear.weight.detach(), "image_proj.proj.bias": torch.zeros(NUM_TOKENS * cross),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    modules = dict(unet.named_modules())
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            attn = modules[name.removesuffix(".processor")]
            state[f"ip_adapter.{index}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
            state[f"ip_adapter.{index}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return state


def attach(unet: Any, state: dict[str, torch.Tensor]) -> list[torch.nn.Parameter]:
    """Load `state` into the UNet with diffusers' own IP-Adapter loader; returns the adapter's parameters."""
    unet._load_ip_adapter_weights([_diffusers_layout(state)], low_cpu_mem_usage=False)
    params = list(unet.encoder_hid_proj.parameters())
    for processor in unet.attn_processors.values():
        if hasattr(processor, "to_k_ip"):
            params += [*processor.to_k_ip.parameters(), *processor.to_v_ip.parameters()]
    return params


def _diffusers_layout(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """h94's flat keys -> the {"image_proj": ..., "ip_adapter": ...} dict `_load_ip_adapter_weights` takes."""
    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, rest = key.split(".", 1)
        out[group][rest] = value
    return out


def export(unet: Any) -> dict[str, torch.Tensor]:
    """The attached adapter's weights in h94's key format (what `ip-adapter_sdxl.safetensors` holds)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    state = {"image_proj.proj.weight": projection.image_embeds.weight, "image_proj.proj.bias": projection.image_embeds.bias,
             "image_proj.norm.weight": projection.norm.weight, "image_proj.norm.bias": projection.norm.bias}
    for index, (name, processor) in enumerate(unet.attn_processors.items()):
        if hasattr(processor, "to_k_ip"):
            state[f"ip_adapter.{index}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            state[f"ip_adapter.{index}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


@torch.no_grad()
def image_embeddings(image_encoder: Any, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The image encoder's projected embeddings (the global adapter's input) of world images in [-1, 1]."""
    return torch.cat([image_encoder(clip.clip_pixels(images[i : i + batch_size])).image_embeds
                      for i in range(0, len(images), batch_size)])


def train_adapter(folder: Path, recipe: AdapterTraining = AdapterTraining(), log_every: int = 100) -> tuple[Any, Any, dict[str, Any]]:
    """Train the adapter on the frozen UNet, VAE and encoders in `folder`; returns the pipeline (adapter attached,
    in eval mode), the image encoder and a record."""
    from styleprobe.models.toy.unet import build_unet, caption_embeddings, caption_rows, denoising_loss, encode_latents

    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    unet = load_half(build_unet(), folder / "unet.safetensors")
    pipe = build_pipeline(folder, unet)
    image_encoder = load_towers(folder)["image_encoder"]
    images, contents, styles = world.batch(world.samples(recipe.train_images, recipe.seed))
    start = time.perf_counter()
    x = torch.from_numpy(images)
    means, stds = encode_latents(pipe.vae, x)
    references = image_embeddings(image_encoder, x)
    embeds, pooled, index = caption_embeddings(pipe)
    params = attach(unet, initial_state(unet, references.shape[1], generator))
    for p in params:
        p.requires_grad_(True)
    unet.train()
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.05)
    losses: list[float] = []
    for step in range(1, recipe.steps + 1):
        idx = rng.choice(len(means), recipe.batch_size, replace=False)
        latents = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=generator)
        rows = caption_rows(contents[idx], styles[idx], recipe.p_content_only, recipe.p_style_only, recipe.p_no_text, rng,
                            index)
        keep = torch.from_numpy(rng.random(len(idx)) >= recipe.p_no_image).float()[:, None]
        image = (references[idx] * keep)[:, None, :]
        loss = denoising_loss(unet, latents, embeds[rows], pooled[rows], alphas_cumprod, recipe.snr_gamma, generator,
                              added_cond_kwargs={"image_embeds": [image]})
        optimise(optimizer, schedule, loss, losses, step, recipe.steps, "adapter", log_every, recipe.max_grad_norm)
    unet.eval().requires_grad_(False)
    record = {"seconds": round(time.perf_counter() - start, 1), "final_loss": float(np.mean(losses[-100:])),
              "recipe": asdict(recipe), "num_tokens": NUM_TOKENS}
    return pipe, image_encoder, record


def image_prompt_accuracy(pipe: Any, image_encoder: Any, judge: Any, n: int = 128, seed: int = 0,
                          scales: tuple[float, ...] = (1.0, 0.0), **sampling: Any) -> dict[str, Any]:
    """Held-out references with prompts naming only another content ("a star"): at each adapter scale (1: every
    layer, the probe's `all`; 0: `none`), how often the judge finds the reference's style, the prompted content and
    the reference's content (leak) in the image."""
    refs = world.samples(n, seed)
    images, contents, styles = world.batch(refs)
    prompted = (contents + 1 + np.random.default_rng(seed).integers(0, len(world.CONTENTS) - 1, n)) % len(world.CONTENTS)
    captions = [world.caption(world.CONTENTS[c], None) for c in prompted]
    embeds = image_embeddings(image_encoder, torch.from_numpy(images))
    out: dict[str, Any] = {"references": n}
    for scale in scales:
        pipe.set_ip_adapter_scale(scale)
        got_c, got_s = judge.predict(generate(pipe, captions, [seed + 10_000 + i for i in range(n)], image_embeds=embeds, **sampling))
        out[f"scale_{scale:g}"] = {"reference_style": float((got_s == styles).mean()),
                                   "prompted_content": float((got_c == prompted).mean()),
                                   "reference_content": float((got_c == contents).mean())}
    pipe.set_ip_adapter_scale(1.0)
    return out
