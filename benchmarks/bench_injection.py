#!/usr/bin/env python
"""Time IP-Adapter injection alone, in one process: styleprobe's processor against diffusers' own.

On one loaded pipeline, the same prompt, reference and seeds, denoising to latents (no VAE decode), every
cross-attention layer injecting at scale 1:

  diffusers     diffusers' IPAdapterAttnProcessor2_0 (`native_processors`, `set_ip_adapter_scale(1.0)`): the baseline
  styleprobe    styleprobe's per-sample processor, the batch's scales put on the device once (`InjectionState.use`)
  no_image      diffusers' processor at scale 0: the image branch skipped, the floor both are measured against

at each --batch-sizes. Reported per batch size: seconds per call (median of --repeats after one warm-up), the
ratio styleprobe / diffusers, and each path's cost over the floor. `--knob` applies a speed setting to every path
(measured, never a default that changes images): channels_last, compile (torch.compile of the UNet, which our
processors must not break), sdpa=flash|efficient|math|cudnn. (diffusers' fuse_qkv_projections is not offered: it
replaces every attention processor, ours and diffusers' IP-Adapter ones included, so it would time no injection.) With --flops the UNet's FLOPs per call are
counted once (torch.utils.flop_counter) and each path's share of the GPU's bf16 peak (--peak-tflops) printed.

    .venv/bin/python benchmarks/bench_injection.py --model tiny
    .venv/bin/python benchmarks/bench_injection.py --model sdxl --resolution 1024 --steps 30 --batch-sizes 1,4 --flops
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import REPO, model_spec, quiet  # noqa: E402

DEFAULTS = {"tiny": {"resolution": 64, "steps": 4}, "sdxl": {"resolution": 256, "steps": 2}}
PATHS = ("diffusers", "styleprobe", "no_image")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "sdxl"], default="tiny")
    p.add_argument("--preset", default=None, help="a real model preset instead of --model")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch-sizes", default="1,4", help="comma-separated (default 1,4)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per path and batch size (median reported)")
    p.add_argument("--knob", action="append", default=[],
                   help="channels_last | compile | sdpa=flash|efficient|math|cudnn (repeatable)")
    p.add_argument("--flops", action="store_true", help="count the UNet's FLOPs per call and print the share of peak")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 peak (default: H100/H200)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default .bench/injection-<model>.json)")
    return p.parse_args(argv)


def apply_knobs(pipe: Any, knobs: list[str]) -> contextlib.ExitStack:
    """Set the speed knobs on the pipeline; the returned stack holds the SDPA backend context."""
    import torch

    stack = contextlib.ExitStack()
    for knob in knobs:
        name, _, value = knob.partition("=")
        if name == "channels_last":
            pipe.unet.to(memory_format=torch.channels_last)
        elif name == "compile":
            pipe.unet = torch.compile(pipe.unet, fullgraph=False)
        elif name == "sdpa":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
            if value not in backends:
                raise SystemExit(f"--knob sdpa={value!r}; choose one of {', '.join(backends)}")
            stack.enter_context(sdpa_kernel(backends[value]))
        else:
            raise SystemExit(f"unknown --knob {knob!r}; choose channels_last, compile or sdpa=<backend>")
    return stack


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    import torch

    from styleprobe import models
    from styleprobe.data import load_style_set
    from styleprobe.engine import Engine
    from styleprobe.injection import native_processors, per_sample_adapter_inputs
    from styleprobe.methods import method
    from styleprobe.sampler import Sampler
    from styleprobe.subtraction import adapter_inputs, encode_references

    spec, preset = model_spec(args)
    resolution = args.resolution or DEFAULTS.get(args.model, {}).get("resolution") or int(preset["resolution"])
    steps = args.steps or DEFAULTS.get(args.model, {}).get("steps") or int(preset["steps"])
    model = models.load(spec, args.device)
    sampler = Sampler(steps=steps, guidance=args.guidance, height=resolution, width=resolution)
    engine = Engine(model)
    engine.use(method("ip_adapter"), sampler)
    pipe, device = model.pipe, model.device
    state = pipe.unet.styleprobe_state
    knobs = apply_knobs(pipe, args.knob)
    reference = load_style_set("builtin:shapes_small")[0].load()
    cond, uncond = encode_references(model, [reference])
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    def call(path: str, batch: int) -> None:
        embeds = engine.prompt_embeds(["a cat sitting on a chair"] * batch, sampler)
        latents = engine.noise(list(range(batch)), sampler)
        ip = adapter_inputs(cond.repeat(batch, 1), uncond.repeat(batch, 1), True)
        kwargs = dict(**embeds, latents=latents, num_inference_steps=steps, guidance_scale=args.guidance,
                      height=resolution, width=resolution, output_type="latent")
        with torch.inference_mode(), per_sample_adapter_inputs(pipe, ip) as ip_embeds:
            if path == "styleprobe":
                scales = torch.ones(batch, len(state.layer_map))
                with state.use(scales, device, model.dtype):
                    pipe(ip_adapter_image_embeds=ip_embeds, **kwargs)
            else:
                with native_processors(pipe.unet):
                    pipe.set_ip_adapter_scale(1.0 if path == "diffusers" else 0.0)
                    try:
                        pipe(ip_adapter_image_embeds=ip_embeds, **kwargs)
                    finally:
                        pipe.set_ip_adapter_scale(1.0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    flops_per_call = None
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            call("diffusers", 1)
        flops_per_call = counter.get_total_flops()  # every UNet call of one batch-1 image, CFG included

    results: dict[str, Any] = {}
    with knobs:
        for batch in sizes:
            row: dict[str, Any] = {}
            for path in PATHS:
                call(path, batch)  # warm-up (and compilation, with --knob compile)
                times = []
                for _ in range(args.repeats):
                    sync()
                    start = time.perf_counter()
                    call(path, batch)
                    sync()
                    times.append(time.perf_counter() - start)
                row[path] = {"seconds": statistics.median(times), "all": times,
                             "seconds_per_image": statistics.median(times) / batch}
                if flops_per_call:
                    share = flops_per_call * batch / statistics.median(times) / (args.peak_tflops * 1e12)
                    row[path]["share_of_bf16_peak"] = share
            d, o, n = (row[p]["seconds"] for p in PATHS)
            row["styleprobe_over_diffusers"] = o / d
            row["diffusers_image_branch_over_floor"] = d / n - 1
            row["styleprobe_image_branch_over_floor"] = o / n - 1
            results[str(batch)] = row
            print(f"batch {batch}: diffusers {d:.3f} s, styleprobe {o:.3f} s ({o / d:.3f}x), no image branch {n:.3f} s"
                  + (f"; share of bf16 peak: {row['diffusers']['share_of_bf16_peak']:.1%} / "
                     f"{row['styleprobe']['share_of_bf16_peak']:.1%}" if flops_per_call else ""))

    out = args.out or REPO / ".bench" / f"injection-{spec.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": spec.name, "device": str(device), "dtype": str(model.dtype), "resolution": resolution, "steps": steps,
        "guidance": args.guidance, "knobs": args.knob, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "flops_per_image": flops_per_call, "peak_tflops": args.peak_tflops, "results": results,
        "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
