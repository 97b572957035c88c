#!/usr/bin/env python
"""Time every method on the same work in one process: seconds per image and per-reference preparation.

For each method of --methods (default: ip_adapter, style_aligned), on one loaded model, the same references x
prompts x seeds x layer patterns go through `Engine.generate` into a fresh temporary Store (batched calls, PNG
and parquet writes included), with empty caches, so each method's per-reference preparation is counted:
IP-Adapter encodes each reference once; StyleAligned DDIM-inverts each reference once; B-LoRA trains one LoRA per
reference (its training seconds per step are reported from the training records). Each method runs at its
own sampler defaults (experiments/method/*.yaml over the model preset's: on SDXL, IP-Adapter 30 steps at guidance
5, StyleAligned 50 DDIM steps at guidance 10) unless --steps / --guidance set them for all. Reported per method:
generation seconds per image, seconds per image and denoising step (what differs beyond the step count),
preparation seconds per reference, peak RSS and CUDA memory, and the ratios to the first method (the baseline).

    .venv/bin/python benchmarks/bench_methods.py --model tiny
    .venv/bin/python benchmarks/bench_methods.py --model tiny --methods ip_adapter,style_aligned,b_lora
    .venv/bin/python benchmarks/bench_methods.py --model sdxl --resolution 256 --steps 10   # CPU: random SDXL weights
    .venv/bin/python benchmarks/bench_methods.py --model sdxl --resolution 1024              # GPU: real settings

`--model sdxl` is the random-weight model with SDXL's real UNet and VAE (see bench_engine.py); its times are real
SDXL cost at that size, its images noise. The tiny model's numbers check the machinery, not real-model speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_engine import REPO, PeakRSS, forget, maxrss_bytes, model_spec, quiet

DEFAULTS = {"tiny": {"resolution": 64}, "sdxl": {"resolution": 256}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "sdxl"], default="tiny")
    p.add_argument("--preset", default=None, help="a real model preset instead of --model (name in experiments/model/)")
    p.add_argument("--methods", default="ip_adapter,style_aligned", help="comma-separated; the first is the baseline")
    p.add_argument("--patterns", default="none,all,style,style_layout", help="layer patterns, as injection.patterns")
    p.add_argument("--resolution", type=int, default=None, help="image size (default 64 tiny / 256 sdxl / the preset's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for every method (default: each method's own)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale for every method (default: each method's own)")
    p.add_argument("--references", type=int, default=2, help="how many references of builtin:shapes")
    p.add_argument("--prompts", type=int, default=2, help="how many prompts of builtin:objects")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=None, help="B-LoRA training steps (default: the config's for the model)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method (the median is reported)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default .bench/methods-<model>.json)")
    args = p.parse_args(argv)
    if args.resolution is None and not args.preset:
        args.resolution = DEFAULTS[args.model]["resolution"]
    if args.out is None:
        args.out = REPO / ".bench" / f"methods-{args.preset or args.model}.json"
    return args


def entries_for(args: argparse.Namespace, preset: dict[str, Any], layer_map) -> list[Any]:
    """One entry per method, with the method's config file as shipped and the sampler settings given here."""
    from omegaconf import OmegaConf

    from styleprobe.methods.base import parse_entries

    methods = {}
    for name in args.methods.split(","):  # resolved against the model preset (its method_defaults, e.g. tiny's B-LoRA)
        composed = OmegaConf.merge({"model": preset}, {"method": OmegaConf.load(REPO / "experiments" / "method" / f"{name}.yaml")})
        methods.update(OmegaConf.to_container(composed, resolve=True)["method"])
    if args.train_steps and "b_lora" in methods:
        methods["b_lora"]["train_steps"] = args.train_steps
    given = {"steps": args.steps, "guidance": args.guidance, "height": args.resolution, "width": args.resolution}
    return parse_entries(methods, patterns=args.patterns.split(","), presets={}, sampler=given,
                         model={**preset, "resolution": preset.get("resolution")}, layer_map=layer_map)


def run_method(model, items, batch_size: int) -> dict[str, Any]:
    """Engine.generate of one method's items into a fresh Store: wall seconds, preparation, memory."""
    import torch

    from styleprobe.run.engine import Engine
    from styleprobe.run.store import Store

    forget(model)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp, PeakRSS() as rss:
        start, cpu = time.perf_counter(), time.process_time()
        stats = Engine(model, batch_size).generate(items, Store(tmp), run_id="bench")
        if cuda:
            torch.cuda.synchronize(model.device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    name = items[0].entry.name
    trained = [p for p in stats.prepared.get(name, []) if "seconds_per_step" in p and not p.get("reused")]
    return {
        "train_seconds_per_step": statistics.median(p["seconds_per_step"] for p in trained) if trained else None,
        "wall_seconds": wall, "cpu_seconds": cpu,
        "prepare_seconds": stats.prepare_seconds.get(name, 0.0),
        "generate_seconds": stats.generate_seconds.get(name, 0.0),
        "images": stats.generated,
        "peak_rss_bytes": rss.peak_bytes,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(model.device) if cuda else None,
        "loadavg_1min_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    import diffusers
    import torch

    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set
    from styleprobe.models import loading
    from styleprobe.models.layers import LayerMap
    from styleprobe.run.plan import build_plan

    spec, preset = model_spec(args)
    resolution = args.resolution or int(preset["resolution"])
    t0 = time.perf_counter()
    model = loading.load(spec, args.device)
    load_seconds = time.perf_counter() - t0
    entries = entries_for(args, {**preset, "resolution": resolution}, lambda site: LayerMap.from_unet(model.pipe.unet, site))
    references = load_style_set("builtin:shapes")[: args.references]
    prompts = load_prompts("builtin:objects")[: args.prompts]
    dtype = str(model.dtype).removeprefix("torch.")
    plans = {e.name: build_plan(model=spec, dtype=dtype, entries=[e], references=references, prompts=prompts,
                                seeds=list(range(args.seeds))) for e in entries}
    print(f"model {spec.name} on {model.device} ({dtype}), {resolution}px; {len(references)} ref x {len(prompts)} prompt x "
          f"{args.seeds} seed x {len(args.patterns.split(','))} patterns per method; batch {args.batch_size}; "
          f"torch threads {torch.get_num_threads()}; load {load_seconds:.1f} s", flush=True)
    for name, items in plans.items():  # untimed warm-up: one image per method (attaches the method, first calls)
        run_method(model, items[:1], args.batch_size)
    results: dict[str, Any] = {}
    for name, items in plans.items():
        sampler = items[0].sampler
        runs = [run_method(model, items, args.batch_size) for _ in range(args.repeats)]
        gen = statistics.median(r["generate_seconds"] for r in runs)
        prep = statistics.median(r["prepare_seconds"] for r in runs)
        n = len(items)
        results[name] = {
            "steps": sampler.steps, "guidance": sampler.guidance, "scheduler": sampler.scheduler_id, "images": n,
            "references": len(references),
            "generate_seconds": gen, "seconds_per_image": gen / n, "seconds_per_image_step": gen / n / sampler.steps,
            "prepare_seconds": prep, "prepare_seconds_per_reference": prep / len(references),
            "train_seconds_per_step": statistics.median(r["train_seconds_per_step"] for r in runs)
            if runs[0]["train_seconds_per_step"] is not None else None,
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "cuda_max_allocated_bytes": max((r["cuda_max_allocated_bytes"] or 0) for r in runs) or None,
            "runs": runs,
        }
        train = results[name]["train_seconds_per_step"]
        print(f"  {name:14s} {sampler.steps:3d} steps: {gen:8.2f} s for {n} images, preparation {prep:6.2f} s"
              + (f" (LoRA training {train:.3f} s/step)" if train is not None else ""), flush=True)
    base = next(iter(results))
    print(f"\n{'method':14s} {'steps':>5s} {'s/image':>9s} {'s/img/step':>11s} {'prep s/ref':>11s} {'vs ' + base + ' (image, step)':>28s}")
    for name, r in results.items():
        b = results[base]
        r["ratio_per_image"] = r["seconds_per_image"] / b["seconds_per_image"]
        r["ratio_per_image_step"] = r["seconds_per_image_step"] / b["seconds_per_image_step"]
        print(f"{name:14s} {r['steps']:5d} {r['seconds_per_image']:9.3f} {r['seconds_per_image_step']:11.4f} "
              f"{r['prepare_seconds_per_reference']:11.2f} {r['ratio_per_image']:12.2f}x {r['ratio_per_image_step']:12.2f}x")
    out = {
        "model": spec.name, "device": str(model.device),
        "device_name": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": dtype, "resolution": resolution, "patterns": args.patterns.split(","), "batch_size": args.batch_size,
        "references": len(references), "prompts": len(prompts), "seeds": args.seeds, "repeats": args.repeats,
        "baseline": base, "methods": results, "load_seconds": load_seconds, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "process_maxrss_bytes": maxrss_bytes(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
