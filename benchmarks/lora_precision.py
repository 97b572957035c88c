#!/usr/bin/env python
"""B-LoRA training under each precision: do float16 gradients underflow without loss scaling?

Trains one B-LoRA (styleprobe's `lora_training.train`, the original's recipe: rank 64, AdamW at 5e-5, the content
and style modules) for --steps steps from the same initial LoRA, image, noise and timesteps in each mode:

- fp32: the UNet in float32, no autocast (the baseline);
- fp16: the UNet in float16 under float16 autocast with a GradScaler (`mixed_precision=fp16`, the original's);
- fp16_unscaled: the same without the scaler (how styleprobe trained on a GPU before the knob existed);
- bf16: the UNet in bfloat16 under bfloat16 autocast (`mixed_precision=bf16`).

The UNet is cast to the mode's dtype as accelerate's scripts cast it; the LoRA stays float32. Reported per mode:
losses, gradient norms (unscaled, before clipping), skipped steps and the final loss scale, how many lora_B
entries moved from their zero start (a LoRA learning from underflowed gradients moves few or none), the cosine of
the trained lora_B with fp32's, seconds per step and peak CUDA memory; as JSON (--out) and a markdown table.

    .venv/bin/python benchmarks/lora_precision.py --steps 3                 # CPU, the tiny model: machinery only
    .venv/bin/python benchmarks/lora_precision.py --size sdxl --steps 50    # GPU: SDXL's real UNet, random weights

`--size sdxl` builds SDXL's UNet (2.6 B parameters) with random weights on the device, a random latent posterior
and random prompt embeddings of SDXL's shapes (no VAE or text encoders are loaded): the gradient magnitudes of a
real-size UNet at 1024 px, not those of trained weights.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
MODES = {  # mode -> (the UNet's dtype, mixed_precision, loss scaling)
    "fp32": (torch.float32, "no", False),
    "fp16": (torch.float16, "fp16", True),
    "fp16_unscaled": (torch.float16, "fp16", False),
    "bf16": (torch.bfloat16, "bf16", False),
}
DEFAULTS = {"tiny": {"resolution": 64}, "sdxl": {"resolution": 1024}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "sdxl"], default="tiny")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, among {', '.join(MODES)}")
    p.add_argument("--resolution", type=int, default=None, help="training size (default 64 tiny / 1024 sdxl)")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for sdxl, off for tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default .bench/lora-precision-<size>.json)")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        p.error(f"--modes: unknown {unknown}; choose among {', '.join(MODES)}")
    args.resolution = args.resolution or DEFAULTS[args.size]["resolution"]
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = args.size == "sdxl"
    args.out = args.out or REPO / ".bench" / f"lora-precision-{args.size}.json"
    return args


# the model ----------------------------------------------------------------------------------------------------
def tiny_model(device: str) -> tuple[Any, dict[str, Any]]:
    """The tiny pipeline (float32) and its training noise schedule."""
    from omegaconf import OmegaConf

    from styleprobe.models.loading import load, quiet_libraries
    from styleprobe.models.presets import ModelSpec

    quiet_libraries()
    spec = ModelSpec.from_config(OmegaConf.to_container(OmegaConf.load(REPO / "experiments" / "model" / "tiny.yaml")))
    spec = ModelSpec(**{**spec.__dict__, "dtype": "float32"})
    model = load(spec, device)
    return model.pipe, model.default_scheduler.config


class RandomVAE(torch.nn.Module):
    """Stands in for SDXL's VAE: a fixed random latent posterior of the image's latent size (float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=0.13025)
        self.register_buffer("anchor", torch.zeros(()))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, pixels: torch.Tensor) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        gen = torch.Generator("cpu").manual_seed(0)
        h, w = pixels.shape[-2] // 8, pixels.shape[-1] // 8
        moments = torch.cat([torch.randn(1, 4, h, w, generator=gen) * 5, torch.full((1, 4, h, w), -6.0)], dim=1)
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(moments.to(pixels.device)))


def sdxl_model(device: torch.device) -> tuple[Any, dict[str, Any]]:
    """SDXL's UNet with random weights (float32, made on the device), a random VAE posterior and random prompt
    embeddings of SDXL's shapes, as the attributes `train` uses; SDXL's training noise schedule."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from styleprobe.models.tiny import SDXL_UNET_CONFIG

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    unet.requires_grad_(False).eval()
    gen = torch.Generator("cpu").manual_seed(1)
    embeds, pooled = torch.randn(1, 77, 2048, generator=gen), torch.randn(1, 1280, generator=gen)

    def encode_prompt(**_: Any) -> tuple[torch.Tensor, None, torch.Tensor, None]:
        return embeds.to(device), None, pooled.to(device), None

    pipe = SimpleNamespace(unet=unet, vae=RandomVAE().to(device), device=device, encode_prompt=encode_prompt)
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").config
    return pipe, schedule


# one mode -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def scaler_off(off: bool) -> Iterator[None]:
    """Training without the loss scaler (fp16_unscaled): the scaler styleprobe's training asks for is disabled."""
    import styleprobe.methods.b_lora.training as lt

    real = lt.grad_scaler
    if off:
        lt.grad_scaler = lambda mode, device: torch.amp.GradScaler(device.type, enabled=False)
    try:
        yield
    finally:
        lt.grad_scaler = real


def run_mode(pipe: Any, schedule: dict[str, Any], image: Any, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Train in one mode on a copy of the UNet cast to the mode's dtype; the summary and the trained lora_B."""
    from styleprobe.methods.b_lora.lora import MODULE_PRESETS, PROJECTIONS, target_modules
    from styleprobe.methods.b_lora.training import Recipe, train
    from styleprobe.models.layers import LayerMap

    dtype, mixed_precision, scaled = MODES[mode]
    unet = copy.deepcopy(pipe.unet).to(dtype)
    on = SimpleNamespace(unet=unet, vae=pipe.vae, device=pipe.device, encode_prompt=pipe.encode_prompt)  # pipe untouched
    layer_map = LayerMap.from_unet(unet, "attn1")
    recipe = Recipe(targets=tuple(target_modules(MODULE_PRESETS["b_lora"], PROJECTIONS, layer_map)), rank=args.rank,
                    lora_alpha=float(args.rank), learning_rate=args.learning_rate, steps=args.steps,
                    resolution=args.resolution, seed=args.seed, mixed_precision=mixed_precision)
    device = unet.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with scaler_off(not scaled):
        t0 = time.perf_counter()
        trained = train(on, image, recipe, f"bench_{mode}", schedule, gradient_checkpointing=args.gradient_checkpointing)
        seconds = time.perf_counter() - t0
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    del unet
    ups = torch.cat([v.flatten() for k, v in sorted(trained.state_dict.items()) if "lora.up" in k])
    norms, losses = trained.grad_norms, trained.losses
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "mode": mode, "unet_dtype": str(dtype).removeprefix("torch."), "mixed_precision": mixed_precision,
        "loss_scaling": scaled, "steps": trained.steps, "seconds_per_step": round(seconds / trained.steps, 4),
        "loss_first": losses[0], "loss_last_10pct": statistics.fmean(tail), "losses": losses,
        "grad_norm_first": norms[0], "grad_norm_median": statistics.median(norms), "grad_norm_min": min(norms),
        "grad_norm_max": max(norms), "zero_grad_steps": sum(1 for n in norms if n == 0), "grad_norms": norms,
        "skipped_steps": trained.skipped_steps, "loss_scale": trained.loss_scale,
        "lora_B_entries": ups.numel(), "lora_B_moved": int((ups != 0).sum()),
        "lora_B_moved_fraction": float((ups != 0).float().mean()), "lora_B_max_abs": float(ups.abs().max()),
        "peak_gpu_bytes": peak, "_ups": ups,
    }


def compare(results: list[dict[str, Any]]) -> None:
    """Each mode's trained lora_B against fp32's: cosine and relative difference (needs the fp32 mode)."""
    base = next((r["_ups"] for r in results if r["mode"] == "fp32"), None)
    for r in results:
        ups = r.pop("_ups")
        if base is None or not base.norm() > 0:
            r["lora_B_cosine_vs_fp32"] = r["lora_B_rel_diff_vs_fp32"] = None
            continue
        a, b = ups.double(), base.double()
        r["lora_B_cosine_vs_fp32"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 else 0.0
        r["lora_B_rel_diff_vs_fp32"] = float((a - b).norm() / b.norm())


def markdown(results: list[dict[str, Any]]) -> str:
    cols = ["mode", "loss_first", "loss_last_10pct", "grad_norm_first", "grad_norm_median", "zero_grad_steps",
            "skipped_steps", "loss_scale", "lora_B_moved", "lora_B_entries", "lora_B_cosine_vs_fp32", "seconds_per_step"]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return str(len(v))
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None, pipe: Any = None, schedule: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the modes; `pipe` and `schedule` may be given (a loaded tiny pipeline), else they are made for --size."""
    from styleprobe.data.style_sets import load_style_set
    from styleprobe.models.devices import resolve_device

    args = parse_args(argv)
    device = resolve_device(args.device)
    if pipe is None:
        pipe, schedule = tiny_model(str(device)) if args.size == "tiny" else sdxl_model(device)
    image = load_style_set("builtin:shapes")[0].load()
    results = [run_mode(pipe, schedule, image, args, mode) for mode in args.modes]
    compare(results)
    report = {
        "size": args.size, "steps": args.steps, "resolution": args.resolution, "rank": args.rank,
        "learning_rate": args.learning_rate, "seed": args.seed, "gradient_checkpointing": args.gradient_checkpointing,
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(markdown(results))
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
