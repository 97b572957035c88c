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
from collections.abc import Callable, Iterator
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


SDPA_BACKENDS = ("flash", "efficient", "math", "cudnn")


@contextlib.contextmanager
def knob(pipe: Any, spec: str, compile_backend: str = "inductor") -> Iterator[None]:
    """One speed knob on the pipeline's UNet for the block, undone after it (so knobs can be timed one at a time).

    compile uses `nn.Module.compile` (in place: the UNet keeps its name, attributes and processors);
    `compile_backend` "eager" checks the graph capture alone (the CPU smoke test), "inductor" is the real one.
    """
    import torch

    name, _, value = spec.partition("=")
    unet = pipe.unet
    if name == "channels_last":
        unet.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            unet.to(memory_format=torch.contiguous_format)
    elif name == "compile":
        unet.compile(backend=compile_backend, fullgraph=False)
        try:
            yield
        finally:
            unet._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward
    elif name == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                    "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
        if value not in backends:
            raise SystemExit(f"--knob sdpa={value!r}; choose one of {', '.join(backends)}")
        with sdpa_kernel(backends[value]):
            yield
    else:
        raise SystemExit(f"unknown --knob {spec!r}; choose channels_last, compile or sdpa=<backend>")


def apply_knobs(pipe: Any, knobs: list[str]) -> contextlib.ExitStack:
    """Set the speed knobs on the pipeline; closing the returned stack undoes them."""
    stack = contextlib.ExitStack()
    for spec in knobs:
        stack.enter_context(knob(pipe, spec))
    return stack


def make_call(model: Any, engine: Any, sampler: Any, reference: Any) -> Callable[[str, int], None]:
    """`call(path, batch)`: one pipeline call of `batch` images to latents under `path` (one of PATHS), the same
    prompt, reference and seeds for every path; the engine must have IP-Adapter attached (`engine.use`)."""
    import torch

    from styleprobe.methods.ip_adapter.embeddings import adapter_inputs, encode_references
    from styleprobe.methods.ip_adapter.injection import native_processors, per_sample_adapter_inputs

    pipe, device = model.pipe, model.device
    state = pipe.unet.styleprobe_state
    cond, uncond = encode_references(model, [reference])

    def call(path: str, batch: int) -> None:
        embeds = engine.prompt_embeds(["a cat sitting on a chair"] * batch, sampler)
        latents = engine.noise(list(range(batch)), sampler)
        ip = adapter_inputs(cond.repeat(batch, 1), uncond.repeat(batch, 1), True)
        kwargs = dict(**embeds, latents=latents, num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
                      height=sampler.height, width=sampler.width, output_type="latent")
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

    return call


def count_flops(call: Callable[[str, int], None]) -> int:
    """FLOPs of one batch-1 call (every UNet call of one image, CFG included), by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call("diffusers", 1)
    return counter.get_total_flops()


def time_paths(call: Callable[[str, int], None], sizes: list[int], repeats: int, device: Any,
               flops_per_call: int | None = None, peak_tflops: float = 790.0) -> dict[str, Any]:
    """Per batch size: each path's median seconds after one warm-up, styleprobe / diffusers and each path's cost
    over the floor (no image branch); with `flops_per_call` (a batch-1 call's) each path's share of the peak."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results: dict[str, Any] = {}
    for batch in sizes:
        row: dict[str, Any] = {}
        for path in PATHS:
            call(path, batch)  # warm-up (and compilation, with --knob compile)
            times = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                call(path, batch)
                sync()
                times.append(time.perf_counter() - start)
            row[path] = {"seconds": statistics.median(times), "all": times,
                         "seconds_per_image": statistics.median(times) / batch}
            if flops_per_call:
                share = flops_per_call * batch / statistics.median(times) / (peak_tflops * 1e12)
                row[path]["share_of_bf16_peak"] = share
        d, o, n = (row[p]["seconds"] for p in PATHS)
        row["styleprobe_over_diffusers"] = o / d
        row["diffusers_image_branch_over_floor"] = d / n - 1
        row["styleprobe_image_branch_over_floor"] = o / n - 1
        results[str(batch)] = row
        print(f"batch {batch}: diffusers {d:.3f} s, styleprobe {o:.3f} s ({o / d:.3f}x), no image branch {n:.3f} s"
              + (f"; share of bf16 peak: {row['diffusers']['share_of_bf16_peak']:.1%} / "
                 f"{row['styleprobe']['share_of_bf16_peak']:.1%}" if flops_per_call else ""), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    import torch

    from styleprobe.data.style_sets import load_style_set
    from styleprobe.methods.base import method
    from styleprobe.models import loading
    from styleprobe.run.engine import Engine
    from styleprobe.run.sampler import Sampler

    spec, preset = model_spec(args)
    resolution = args.resolution or DEFAULTS.get(args.model, {}).get("resolution") or int(preset["resolution"])
    steps = args.steps or DEFAULTS.get(args.model, {}).get("steps") or int(preset["steps"])
    model = loading.load(spec, args.device)
    sampler = Sampler(steps=steps, guidance=args.guidance, height=resolution, width=resolution)
    engine = Engine(model)
    engine.use(method("ip_adapter"), sampler)
    pipe, device = model.pipe, model.device
    knobs = apply_knobs(pipe, args.knob)
    reference = load_style_set("builtin:shapes_small")[0].load()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    call = make_call(model, engine, sampler, reference)
    flops_per_call = count_flops(call) if args.flops else None
    with knobs:
        results = time_paths(call, sizes, args.repeats, device, flops_per_call, args.peak_tflops)

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
