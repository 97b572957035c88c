#!/usr/bin/env python
"""Peak GPU memory of SDXL + IP-Adapter per batch size, against styleprobe's estimate (`styleprobe.models.memory`).

Builds the real-size components with random weights on the device (`styleprobe.models.architectures`: SDXL's UNet and
VAE, CLIP ViT-L and OpenCLIP bigG text towers, the IP-Adapter's bigG image encoder, a full-size global IP-Adapter),
then for each batch size runs the pipeline twice, as the engine calls it (per-sample latents, precomputed prompt
and adapter embeddings, guidance 5, the VAE sliced): once to latents (the denoising peak) and once to PIL images
(the whole call's peak). It prints, per batch, the measured peaks next to the estimate's terms and their ratio,
as a markdown table, and writes a JSON (default `.bench/memory-<mode>.json`).

    .venv/bin/python benchmarks/memory_estimate.py                 # GPU: 1024 px, 2 steps, batches 1,2,4,8
    .venv/bin/python benchmarks/memory_estimate.py --smoke         # CPU: the tiny model, 64 px (no peaks measured)

A batch that runs out of memory is recorded as such and the next one is tried.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the tiny model on the CPU: checks the script, measures nothing")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,2,4,8; smoke 1,2)")
    p.add_argument("--resolution", type=int, default=None, help="height = width (default 1024; smoke 64)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps (memory does not grow with them)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--device", default=None, help="default cuda (smoke: cpu)")
    p.add_argument("--dtype", default=None, help="float16 | bfloat16 | float32 (default float16; smoke float32)")
    p.add_argument("--no-slicing", action="store_true", help="decode the whole batch at once (as before slicing)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.smoke else "1,2,4,8")).split(",")]
    args.resolution = args.resolution or (64 if args.smoke else 1024)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.dtype = args.dtype or ("float32" if args.smoke else "float16")
    args.out = args.out or REPO / ".bench" / f"memory-{'smoke' if args.smoke else 'sdxl'}.json"
    return args


def build_pipeline(smoke: bool, device: Any, dtype: Any) -> Any:
    """SDXL + a global IP-Adapter with random weights: the tiny model's components, or real-size ones."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPVisionModelWithProjection

    from styleprobe.models import architectures, tiny
    from styleprobe.models.loading import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    if smoke:
        root = tiny.ensure_tiny()
        pipe = StableDiffusionXLPipeline.from_pretrained(root / "stable-diffusion-xl-base", dtype=dtype)
        encoder = CLIPVisionModelWithProjection.from_pretrained(root / "IP-Adapter" / "sdxl_models" / "image_encoder",
                                                                dtype=dtype)
    else:
        parts = {name: architectures.build(name, device, dtype) for name in architectures.COMPONENTS}
        encoder = parts.pop("image_encoder")
        pipe = StableDiffusionXLPipeline(
            **parts, tokenizer=tiny._tokenizer("<|endoftext|>"), tokenizer_2=tiny._tokenizer("!"),
            scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             steps_offset=1, timestep_spacing="leading"),
        )
    pipe.to(device)
    with torch.device(device):
        flat = tiny._ip_adapter_state_dict(pipe.unet, encoder.config.projection_dim)
    nested = {part: {k.removeprefix(f"{part}."): v for k, v in flat.items() if k.startswith(f"{part}.")}
              for part in ("image_proj", "ip_adapter")}
    pipe.load_ip_adapter(nested, subfolder="", weight_name="", image_encoder_folder=None)
    del flat, nested
    pipe.register_modules(image_encoder=encoder.to(device))
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe: Any, batch: int, args: argparse.Namespace, output_type: str) -> None:
    """One pipeline call as the engine makes it: per-sample latents and precomputed embeddings."""
    import torch

    device, dtype = pipe.unet.device, pipe.unet.dtype
    g = torch.Generator("cpu").manual_seed(batch)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    cross, pooled = pipe.unet.config.cross_attention_dim, pipe.text_encoder_2.config.projection_dim
    image_dim = pipe.image_encoder.config.projection_dim
    side = args.resolution // pipe.vae_scale_factor
    guided = args.guidance > 1
    with torch.inference_mode():
        pipe(prompt_embeds=rand(batch, 77, cross), negative_prompt_embeds=rand(batch, 77, cross),
             pooled_prompt_embeds=rand(batch, pooled), negative_pooled_prompt_embeds=rand(batch, pooled),
             ip_adapter_image_embeds=[rand(batch * (2 if guided else 1), 1, image_dim)],
             latents=rand(batch, pipe.unet.config.in_channels, side, side), num_inference_steps=args.steps,
             guidance_scale=args.guidance, height=args.resolution, width=args.resolution, output_type=output_type)


def measure(pipe: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Peak bytes of one batch denoised to latents and of the whole call (None on the CPU)."""
    import torch

    cuda = pipe.unet.device.type == "cuda"
    out: dict[str, Any] = {}
    for phase, output_type in (("denoise", "latent"), ("total", "pil")):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            call(pipe, batch, args, output_type)
        except torch.OutOfMemoryError:
            out[phase] = "out of memory"
            continue
        out[f"{phase}_seconds"] = round(time.perf_counter() - t0, 3)
        out[phase] = int(torch.cuda.max_memory_allocated()) if cuda else None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from styleprobe.models import memory

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pipe = build_pipeline(args.smoke, device, dtype)
    (pipe.vae.disable_slicing if args.no_slicing else pipe.vae.enable_slicing)()
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    resident = memory.module_bytes(modules)
    allocated = int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None
    vae_parameters = sum(p.numel() for p in pipe.vae.parameters())
    rows = []
    for batch in args.batch_sizes:
        est = memory.estimate(resident, pipe.unet.config, pipe.vae.config, height=args.resolution, width=args.resolution,
                              dtype=dtype, guided=args.guidance > 1, batch=batch, vae_parameters=vae_parameters,
                              sliced=not args.no_slicing)
        measured = measure(pipe, batch, args)
        ratio = measured["total"] / est.total if isinstance(measured.get("total"), int) else None
        rows.append({"batch": batch, "estimate": {"total": est.total, "resident": est.resident, "denoise": est.denoise,
                                                  "decode": est.decode, "floor": est.floor},
                     "measured": measured, "measured_over_estimate": ratio})
    result = {
        "mode": "smoke" if args.smoke else "sdxl", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or "cpu", "dtype": args.dtype, "resolution": args.resolution, "steps": args.steps,
        "guidance": args.guidance, "sliced": not args.no_slicing, "resident_bytes": resident,
        "allocated_before_bytes": allocated, "rows": rows, "torch": torch.__version__,
        "factors": {"decode": memory.DECODE_FACTOR, "unet": memory.UNET_FACTOR, "floor": memory.FLOOR_BYTES,
                    "spare": memory.SPARE_BYTES},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"-> {args.out}")
    return result


def table(result: dict[str, Any]) -> str:
    gib = lambda b: f"{b / 2**30:.2f}" if isinstance(b, int) else (b or "-")  # noqa: E731
    lines = [f"{result['mode']} on {result['device']}, {result['dtype']}, {result['resolution']} px, "
             f"{'sliced' if result['sliced'] else 'whole-batch'} decode; weights {gib(result['resident_bytes'])} GiB "
             f"(allocated before the calls: {gib(result['allocated_before_bytes'])})",
             "",
             "| batch | estimate GiB | denoise est. | decode est. | measured denoise peak | measured peak | measured / estimate |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        e, m, ratio = r["estimate"], r["measured"], r["measured_over_estimate"]
        lines.append(f"| {r['batch']} | {gib(e['total'])} | {gib(e['denoise'])} | {gib(e['decode'])} | "
                     f"{gib(m.get('denoise'))} | {gib(m.get('total'))} | {f'{ratio:.2f}' if ratio else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
