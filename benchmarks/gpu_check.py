#!/usr/bin/env python
"""styleprobe's GPU goals in one run: every figure a ratio against a baseline measured in the same process.

A lent GPU machine (an H100 or H200, 15 minutes of device time, no network) is rare, so the whole check is one
command of at most 8 minutes, prepared and smoke-tested on the CPU. It reuses the benchmark scripts beside it
(bench_engine, bench_injection, bench_scoring, memory_estimate, lora_precision) on random weights at the real
architectures' sizes, built from their configs (no download):

  p5_memory     peak memory per batch with real-size text and image encoders, against `styleprobe.models.memory`'s estimate
                (goal: batch 4 fits a 24 GB card); runs first, while nothing else is on the GPU
  build         the random-weight SDXL model (real UNet and VAE) for the engine parts, built and loaded once
  p1_engine     seconds per image through the engine at batch 4 and 8 and the UNet's share of the bf16 peak
                (FLOPs counted as `bench_injection --flops` does); goal <= 0.8 s per image
  p2_naive      the engine against a naive diffusers loop (one pipe() call per image) on the same items
  p3_injection  styleprobe's injection vs diffusers' IPAdapterAttnProcessor2_0 vs no image branch, batch 1 and 4
                (goal: <= 2% over diffusers')
  knobs         torch.compile, channels-last and each SDPA backend, each alone, on the engine, against the plain engine
  p4_scoring    images/s of the six default metrics together at real model sizes, PIL vs tensor preprocessing,
                fp32 vs bf16 (goal >= 500 images/s)
  lora_fp16     B-LoRA's training in fp16 (with and without loss scaling) against fp32
  time_windows  the engine with denoising windows (one_hot:window:2) against the same items without them
                (bench_windows.py): images/s and pipeline calls per image

Parts fail independently (an exception is recorded with its message, the next part runs) and each has a time
budget: a part is stopped at twice its budget, and one whose budget no longer fits in --max-seconds is skipped.
`--only` / `--skip` pick parts. Writes gpu_check.json and gpu_check.md into --out DIR (the JSON after every part,
so a run cut short keeps what it measured) and prints the table.

    benchmarks/gpu_check.sh                                   # on the GPU machine: carried wheels, then this
    .venv/bin/python benchmarks/gpu_check.py --out .bench/gpu  # the same, where everything is installed
    .venv/bin/python benchmarks/gpu_check.py --smoke --out .bench/gpu-smoke   # CPU: tiny sizes, one step (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling benchmarks, imported by the parts that use them
sys.path.insert(0, str(REPO / "src"))  # a bare machine: the repository copy, no install
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: nothing is ever downloaded

GIB = 2**30


# settings -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The sizes of one run: `GPU` is the real check, `SMOKE` the same code at tiny sizes on the CPU."""

    model: str  # bench_engine's --model: sdxl (random weights, SDXL's UNet and VAE) or tiny
    resolution: int
    steps: int
    guidance: float
    engine_items: int  # images per P1 measurement (1 reference x 1 prompt x 1 seed x this many layer patterns)
    engine_batches: tuple[int, ...]
    naive_items: int  # P2: the first items, engine at naive_batch against one pipe() call per image
    naive_batch: int
    injection_steps: int  # P3 denoises to latents: per-step cost, fewer steps than P1
    injection_batches: tuple[int, ...]
    injection_repeats: int
    knob_steps: int
    knob_items: int
    knob_batch: int
    knobs: tuple[str, ...]
    compile_backend: str  # inductor on the GPU; eager on the CPU (the graph capture alone: seconds, no compiler)
    scoring_weights: str
    scoring_image_size: int
    scoring_batch: int
    scoring_images: int
    scoring_dtypes: tuple[str, ...]
    memory_args: tuple[str, ...]
    lora_args: tuple[str, ...]
    peak_tflops: float = 790.0  # dense bf16 on an H100 / H200, as bench_injection's default
    max_seconds: float = 480.0
    smoke: bool = False  # goals are not judged on tiny sizes
    budgets: dict[str, float] = field(default_factory=dict)


# Planned seconds per part on an H100 / H200, the real-size builds included (they sum to BUDGET_TOTAL <= 480):
GPU_BUDGETS = {
    "p5_memory": 45,      # SDXL + real encoders (5.3 B parameters) built on the GPU ~20 s; batches 1-8 at 2 steps
    "build": 120,         # the random SDXL written to the cache and loaded (1-2 minutes measured on an H100)
    "p1_engine": 35,      # FLOPs of one step; 8 images at batch 4 and at batch 8, 30 steps (~1.4 s per image)
    "p2_naive": 25,       # 4 images one pipe() call each (~3 s per image) and the engine on them
    "p3_injection": 30,   # 3 paths x batch 1 and 4 x (warm-up + 3) calls of 10 steps to latents
    "knobs": 120,         # plain engine and 5 knobs on 4 images, 10 steps; torch.compile's inductor compile most
    "p4_scoring": 60,     # 4 real-size scoring models built twice (fp32, bf16), 4 x 128 images at batch 32
    "lora_fp16": 35,      # SDXL's UNet in fp32 and its copies; 3 modes x 4 training steps at 1024 px
    "time_windows": 10,   # 4 full-window and 7 windowed images at batch 4, 10 steps (~0.5 s per image)
}
SMOKE_BUDGETS = {"p5_memory": 20, "build": 20, "p1_engine": 15, "p2_naive": 10, "p3_injection": 10, "knobs": 30,
                 "p4_scoring": 40, "lora_fp16": 20, "time_windows": 10}

GPU = Settings(
    model="sdxl", resolution=1024, steps=30, guidance=5.0, engine_items=8, engine_batches=(4, 8), naive_items=4,
    naive_batch=4, injection_steps=10, injection_batches=(1, 4), injection_repeats=3, knob_steps=10, knob_items=4,
    knob_batch=4, knobs=("channels_last", "sdpa=flash", "sdpa=efficient", "sdpa=cudnn", "compile"),
    compile_backend="inductor", scoring_weights="random", scoring_image_size=1024, scoring_batch=32,
    scoring_images=128, scoring_dtypes=("float32", "bfloat16"), memory_args=("--batch-sizes", "1,2,4,8"),
    lora_args=("--size", "sdxl", "--steps", "4", "--modes", "fp32,fp16,fp16_unscaled"), budgets=GPU_BUDGETS,
)
SMOKE = Settings(
    model="tiny", resolution=64, steps=1, guidance=5.0, engine_items=4, engine_batches=(2, 4), naive_items=2,
    naive_batch=2, injection_steps=1, injection_batches=(1, 2), injection_repeats=1, knob_steps=1, knob_items=2,
    knob_batch=2, knobs=("channels_last", "sdpa=math", "compile"), compile_backend="eager", scoring_weights="tiny",
    scoring_image_size=256, scoring_batch=4, scoring_images=4, scoring_dtypes=("float32", "bfloat16"),
    memory_args=("--smoke", "--batch-sizes", "1,4"),
    lora_args=("--steps", "1", "--rank", "4", "--learning-rate", "1e-3", "--modes", "fp32,fp16,fp16_unscaled"),
    max_seconds=300.0, budgets=SMOKE_BUDGETS, smoke=True,
)
BUDGET_TOTAL = sum(GPU_BUDGETS.values())


@dataclass(frozen=True)
class Goal:
    """A performance goal of styleprobe's, checked against one figure of a part."""

    text: str
    op: str  # "<=" or ">="
    target: float
    unit: str

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value <= self.target if self.op == "<=" else value >= self.target


GOALS = {
    "p1_engine": Goal("engine seconds per SDXL image (1024 px, 30 steps, CFG 5), best batch", "<=", 0.8, "s/image"),
    "p3_injection": Goal("styleprobe's injection over diffusers' IPAdapterAttnProcessor2_0, worst batch", "<=", 1.02,
                         "x"),
    "p4_scoring": Goal("the six default metrics together, best of PIL/tensor x fp32/bf16", ">=", 500.0, "images/s"),
    "p5_memory": Goal("peak memory at batch 4 with real-size encoders (fits a 24 GB card)", "<=", 24.0, "GiB"),
}
# The last GPU figures (an H100, before the changes this check measures): context in the report, never a ratio's base.
EARLIER = {"p1_engine": "1.44 s/image at batch 8, 32% of the bf16 peak", "p2_naive": "2.20x",
           "p3_injection": "+25% (batch 1), +9.6% (batch 4)", "p4_scoring": "27.7 images/s",
           "p5_memory": "38 GiB at batch 8 (stand-in encoders, whole-batch decode)"}


# the run's shared state ----------------------------------------------------------------------------------------------
class Context:
    """What the parts share: the settings, the device, a scratch folder and the engine model once built."""

    def __init__(self, settings: Settings, device: str, scratch: Path):
        self.settings = settings
        self.device_arg = device
        self.scratch = scratch
        self.engine: Any = None  # bench_engine.prepare(...) of the P1 settings, set by the build part
        self.partial: dict[str, Any] = {}  # a part's figures so far: kept in the JSON if it fails or times out later

    def engine_args(self, steps: int, items: int, batch: int) -> argparse.Namespace:
        import bench_engine

        s = self.settings
        return bench_engine.parse_args(["--model", s.model, "--resolution", str(s.resolution), "--steps", str(steps),
                                        "--guidance", str(s.guidance), "--patterns", str(items), "--batch-size",
                                        str(batch), "--device", self.device_arg, "--out", str(self.scratch / "e.json")])

    def need_engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError("needs the engine model, which the 'build' part did not make (see its error)")
        return self.engine


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    """Between parts: what one part left behind is not counted in the next one's peak."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# the parts -----------------------------------------------------------------------------------------------------------
def part_p5_memory(ctx: Context) -> dict[str, Any]:
    """memory_estimate.py's measurement, with the batch `engine.batch_size: auto` would pick for 24 GB and here."""
    import memory_estimate
    import torch

    from styleprobe.models import memory

    before = int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else None
    result = memory_estimate.main([*ctx.settings.memory_args, "--device", ctx.device_arg,
                                   "--out", str(ctx.scratch / "memory.json")])
    rows = {r["batch"]: r for r in result["rows"]}

    def auto(total_bytes: int) -> int | None:
        room = total_bytes - memory.SPARE_BYTES
        fits = [b for b in memory.BATCH_SIZES if b in rows and rows[b]["estimate"]["total"] <= room]
        return max(fits) if fits else None

    def gib(v: Any) -> Any:  # bytes as GiB; None (the CPU) or "out of memory" as they are
        return v / GIB if isinstance(v, int) else v

    per_batch = {}
    for b, r in rows.items():
        m = r["measured"]
        per_batch[str(b)] = {"estimate_gib": r["estimate"]["total"] / GIB, "measured_gib": gib(m.get("total")),
                             "measured_denoise_gib": gib(m.get("denoise")),
                             "measured_over_estimate": r["measured_over_estimate"],
                             "seconds": m.get("total_seconds")}
    at4 = per_batch.get("4", {}).get("measured_gib")
    card = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    ratios = {f"batch {b} measured / estimate": v["measured_over_estimate"] for b, v in per_batch.items()}
    return {
        "figures": {"per_batch": per_batch, "weights_gib": result["resident_bytes"] / GIB,
                    "allocated_before_bytes": before, "auto_batch_24gb": auto(24 * GIB),
                    "auto_batch_this_card": auto(card) if card else None, "dtype": result["dtype"],
                    "resolution": result["resolution"], "sliced": result["sliced"]},
        "ratios": ratios,
        "goal_value": at4 if isinstance(at4, float) else None,
        "headline": "; ".join(f"b{b} {_num(v['measured_gib'])}/{_num(v['estimate_gib'])} GiB" for b, v in per_batch.items())
                    + " (measured/estimate)",
    }


def part_build(ctx: Context) -> dict[str, Any]:
    """The engine parts' model: bench_engine.prepare (random SDXL built into $STYLEPROBE_CACHE on first use)."""
    import bench_engine

    s = ctx.settings
    bench_engine.quiet()
    t0 = time.perf_counter()
    ctx.engine = bench_engine.prepare(ctx.engine_args(s.steps, s.engine_items, max(s.engine_batches)))
    model = ctx.engine.model
    return {"figures": {"seconds": time.perf_counter() - t0, "model": ctx.engine.spec.name, "device": str(model.device),
                        "dtype": ctx.engine.dtype_name, "items": len(ctx.engine.items)},
            "ratios": {}, "headline": f"{ctx.engine.spec.name} on {model.device} ({ctx.engine.dtype_name})"}


def part_p1_engine(ctx: Context) -> dict[str, Any]:
    """Seconds per image through the engine per batch size, and the UNet's share of the bf16 peak."""
    import bench_engine
    import bench_injection

    from styleprobe.methods.base import method
    from styleprobe.run.engine import Engine

    e, s = ctx.need_engine(), ctx.settings
    model, items = e.model, e.items
    # FLOPs of one image's UNet calls: one step counted (the count is per step), times the steps
    one_step = replace(e.sampler, steps=1)
    engine = Engine(model)
    engine.use(method("ip_adapter"), one_step)
    flops = bench_injection.count_flops(bench_injection.make_call(model, engine, one_step, e.references[0].load()))
    flops_per_image = flops * e.steps
    per_batch: dict[str, Any] = {}
    for b in s.engine_batches:
        bench_engine.run_engine(model, items[:1], b, "run_batch")  # warm-up
        images, m = bench_engine.timed(lambda b=b: bench_engine.run_engine(model, items, b, "run_batch"), model.device)
        sec = m["seconds"] / len(items)
        per_batch[str(b)] = {"seconds_per_image": sec, "seconds": m["seconds"], "images": len(items),
                             "share_of_bf16_peak": flops_per_image / sec / (s.peak_tflops * 1e12),
                             "cuda_max_allocated_gib": (m["cuda_max_allocated_bytes"] or 0) / GIB or None}
        ctx.partial["p1_engine"] = {"per_batch": per_batch, "unet_flops_per_image": flops_per_image}
        print(f"  engine batch {b}: {sec:.3f} s/image, {per_batch[str(b)]['share_of_bf16_peak']:.1%} of the bf16 peak",
              flush=True)
    first, last = (str(b) for b in (s.engine_batches[0], s.engine_batches[-1]))
    best = min(v["seconds_per_image"] for v in per_batch.values())
    return {
        "figures": {"per_batch": per_batch, "unet_flops_per_image": flops_per_image, "peak_tflops": s.peak_tflops,
                    "resolution": e.resolution, "steps": e.steps, "guidance": e.guidance, "dtype": e.dtype_name},
        "ratios": {f"batch {last} / batch {first} seconds per image": per_batch[last]["seconds_per_image"]
                   / per_batch[first]["seconds_per_image"]},
        "goal_value": best,
        "headline": ", ".join(f"b{b} {v['seconds_per_image']:.3g} s/img ({v['share_of_bf16_peak']:.0%} of peak)"
                              for b, v in per_batch.items()),
    }


def part_p2_naive(ctx: Context) -> dict[str, Any]:
    """bench_engine's two paths on the same items: one pipe() call per image against the engine's batches."""
    import bench_engine

    e, s = ctx.need_engine(), ctx.settings
    model, items = e.model, e.items[: s.naive_items]
    bench_engine.run_baseline(model, items[:1], e.sampler, e.layer_map, e.ref_images)  # warm-ups
    bench_engine.run_engine(model, items[:1], s.naive_batch, "run_batch")
    naive, mb = bench_engine.timed(lambda: bench_engine.run_baseline(model, items, e.sampler, e.layer_map, e.ref_images),
                                   model.device)
    ours, me = bench_engine.timed(lambda: bench_engine.run_engine(model, items, s.naive_batch, "run_batch"), model.device)
    diffs = bench_engine.pixel_diffs(naive, ours)
    speedup = mb["seconds"] / me["seconds"]
    return {
        "figures": {"naive_seconds_per_image": mb["seconds"] / len(items),
                    "engine_seconds_per_image": me["seconds"] / len(items),
                    "images": len(items), "engine_batch": s.naive_batch, "pixel_diff_max": max(diffs.values()),
                    "naive_cpu_seconds": mb["cpu_seconds"], "engine_cpu_seconds": me["cpu_seconds"]},
        "ratios": {"naive / engine seconds": speedup},
        "headline": f"naive {mb['seconds'] / len(items):.3g} s/img, engine {me['seconds'] / len(items):.3g} s/img "
                    f"(batch {s.naive_batch}); max pixel diff {max(diffs.values())}",
    }


def part_p3_injection(ctx: Context) -> dict[str, Any]:
    """bench_injection's three paths (diffusers' processor, ours, no image branch) at each batch size."""
    import bench_injection

    from styleprobe.methods.base import method
    from styleprobe.run.engine import Engine

    e, s = ctx.need_engine(), ctx.settings
    sampler = replace(e.sampler, steps=s.injection_steps)
    engine = Engine(e.model)
    engine.use(method("ip_adapter"), sampler)
    call = bench_injection.make_call(e.model, engine, sampler, e.references[0].load())
    results = bench_injection.time_paths(call, list(s.injection_batches), s.injection_repeats, e.model.device)
    ratios = {f"batch {b} styleprobe / diffusers": r["styleprobe_over_diffusers"] for b, r in results.items()}
    ratios.update({f"batch {b} diffusers / no image branch": 1 + r["diffusers_image_branch_over_floor"]
                   for b, r in results.items()})
    worst = max(r["styleprobe_over_diffusers"] for r in results.values())
    return {
        "figures": {"per_batch": results, "steps": s.injection_steps, "repeats": s.injection_repeats},
        "ratios": ratios, "goal_value": worst,
        "headline": ", ".join(f"b{b} {r['styleprobe_over_diffusers']:.3f}x diffusers" for b, r in results.items()),
    }


def part_knobs(ctx: Context) -> dict[str, Any]:
    """Each speed knob alone (bench_injection.knob, undone after) on the engine, against the plain engine."""
    import bench_engine
    import bench_injection

    e, s = ctx.need_engine(), ctx.settings
    setup = bench_engine.prepare(ctx.engine_args(s.knob_steps, s.knob_items, s.knob_batch), e.model)
    model, items, pipe = setup.model, setup.items, setup.model.pipe

    def run() -> tuple[dict[str, Any], float]:
        images, m = bench_engine.timed(lambda: bench_engine.run_engine(model, items, s.knob_batch, "run_batch"),
                                       model.device)
        return images, m["seconds"]

    run()  # warm-up
    plain_images, plain = run()
    knobs: dict[str, Any] = {"plain": {"seconds_per_image": plain / len(items)}}
    for spec in s.knobs:
        try:
            with bench_injection.knob(pipe, spec, s.compile_backend):
                t0 = time.perf_counter()
                run()  # warm-up: the compilation, for compile
                warm = time.perf_counter() - t0
                images, sec = run()
            diffs = bench_engine.pixel_diffs(plain_images, images)
            knobs[spec] = {"seconds_per_image": sec / len(items), "warmup_seconds": warm, "vs_plain": sec / plain,
                           "pixel_diff_max": max(diffs.values())}
            print(f"  knob {spec}: {sec / plain:.3f}x the plain engine (warm-up {warm:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001 - one knob failing (a backend this GPU lacks) leaves the others
            knobs[spec] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:500]}
            print(f"  knob {spec}: failed: {knobs[spec]['error']}", flush=True)
        finally:
            ctx.partial["knobs"] = {"knobs": knobs}
            if spec.startswith("compile"):
                import torch

                torch._dynamo.reset()
    ratios = {f"{k} / plain": v["vs_plain"] for k, v in knobs.items() if "vs_plain" in v}
    return {
        "figures": {"knobs": knobs, "steps": s.knob_steps, "images": len(items), "batch": s.knob_batch,
                    "compile_backend": s.compile_backend},
        "ratios": ratios,
        "headline": ", ".join(f"{k} {v['vs_plain']:.2f}x" if "vs_plain" in v else f"{k} failed"
                              for k, v in knobs.items() if k != "plain"),
    }


def part_p4_scoring(ctx: Context) -> dict[str, Any]:
    """The default metrics together (bench_scoring's measurement) per dtype and preprocessing path."""
    import bench_scoring

    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set
    from styleprobe.metrics import build_scorers, release_models
    from styleprobe.models.devices import resolve_device

    s = ctx.settings
    bench_scoring.quiet()
    device = resolve_device(ctx.device_arg)
    configs = bench_scoring.metric_configs(bench_scoring.default_metrics())
    references, prompts = load_style_set("builtin:shapes"), load_prompts("builtin:objects")
    b = s.scoring_batch
    inputs = bench_scoring.Inputs(max(b, s.scoring_images), s.scoring_image_size, references, prompts)
    rates: dict[str, Any] = {}
    for dtype in s.scoring_dtypes:
        release_models()
        free_memory()
        scorers = build_scorers(configs, device, s.scoring_weights, dtype=dtype)
        t0 = time.perf_counter()
        for scorer in scorers:  # model loads and the reference / text caches of both paths, untimed
            scorer.score(inputs.priming_batch())
            scorer.score(inputs.batch(0, max(len(references), len(prompts)), on_device=device))
        sync(device)
        prime = time.perf_counter() - t0
        for pre, on in (("pil", None), ("tensor", device)):
            per = bench_scoring.sweep(f"{dtype}/{pre}", bench_scoring.together_call(scorers, inputs, on), [b],
                                      s.scoring_images, 1, device)[str(b)]
            rates[f"{dtype}/{pre}"] = {"images_per_s": per["images_per_s"], "seconds": per["seconds_median"],
                                       "images": per["images"], "priming_seconds": prime,
                                       "steady": per["embeddings_computed_into_caches"] + per["models_loaded"] == 0,
                                       "cuda_max_allocated_gib": (per["cuda_max_allocated_bytes"] or 0) / GIB or None}
            ctx.partial["p4_scoring"] = {"rates": rates}
    release_models()
    base_key = next(iter(rates))
    base = rates[base_key]["images_per_s"]
    best = max(v["images_per_s"] for v in rates.values())
    return {
        "figures": {"rates": rates, "metrics": list(configs), "weights": s.scoring_weights, "batch": b,
                    "image_size": s.scoring_image_size},
        "ratios": {f"{k} / {base_key}": v["images_per_s"] / base for k, v in rates.items() if k != base_key},
        "goal_value": best,
        "headline": ", ".join(f"{k} {v['images_per_s']:.4g}/s" for k, v in rates.items()),
    }


def part_lora_fp16(ctx: Context) -> dict[str, Any]:
    """lora_precision.py's modes: fp16 with and without loss scaling against fp32, on SDXL's UNet (tiny in smoke)."""
    import lora_precision

    report = lora_precision.main([*ctx.settings.lora_args, "--device", ctx.device_arg,
                                  "--out", str(ctx.scratch / "lora.json")])
    by_mode = {r["mode"]: r for r in report["results"]}
    keep = ("seconds_per_step", "loss_first", "loss_last_10pct", "zero_grad_steps", "skipped_steps", "loss_scale",
            "lora_B_moved_fraction", "lora_B_cosine_vs_fp32", "peak_gpu_bytes")
    modes = {m: {k: r.get(k) for k in keep} for m, r in by_mode.items()}
    fp32 = by_mode.get("fp32")
    ratios = {}
    if fp32:
        for m, r in by_mode.items():
            if m != "fp32":
                ratios[f"{m} / fp32 seconds per step"] = r["seconds_per_step"] / fp32["seconds_per_step"]
                ratios[f"{m} lora_B cosine with fp32"] = r["lora_B_cosine_vs_fp32"]
    fp16 = by_mode.get("fp16", {})
    check = (fp16.get("lora_B_cosine_vs_fp32") or 0) >= 0.99 and fp16.get("zero_grad_steps") == 0 if fp16 else None
    return {
        "figures": {"modes": modes, "size": report["size"], "steps": report["steps"], "resolution": report["resolution"],
                    "fp16_trains_like_fp32": check},
        "ratios": ratios,
        "headline": ", ".join(f"{m} cos {_num(r['lora_B_cosine_vs_fp32'])} moved {_num(r['lora_B_moved_fraction'])}"
                              for m, r in modes.items()),
    }


def part_time_windows(ctx: Context) -> dict[str, Any]:
    """The engine with denoising windows against the same items without them (bench_windows.compare)."""
    import bench_engine
    import bench_windows

    e, s = ctx.need_engine(), ctx.settings
    steps = max(2, s.knob_steps)  # two windows need two steps (the smoke run's knobs take one)
    setup = bench_engine.prepare(ctx.engine_args(steps, s.knob_items, s.knob_batch), e.model)
    result = bench_windows.compare(setup, "one_hot:window:2", s.knob_batch)
    full, windowed = result["full"], result["windows"]
    return {
        "figures": {"full": full, "windows": windowed, "windows_spec": result["windows_spec"], "steps": steps,
                    "batch": s.knob_batch},
        "ratios": {"windows / full images per s": result["windows / full images_per_s"],
                   "windows / full calls per image": result["windows / full calls_per_image"]},
        "headline": f"windows {windowed['images_per_s']:.3g} vs full {full['images_per_s']:.3g} images/s "
                    f"({result['windows / full images_per_s']:.2f}x), calls per image "
                    f"{result['windows / full calls_per_image']:.2f}x",
    }


PARTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "p5_memory": part_p5_memory,
    "build": part_build,
    "p1_engine": part_p1_engine,
    "p2_naive": part_p2_naive,
    "p3_injection": part_p3_injection,
    "knobs": part_knobs,
    "p4_scoring": part_p4_scoring,
    "lora_fp16": part_lora_fp16,
    "time_windows": part_time_windows,
}
NEEDS_BUILD = {"p1_engine", "p2_naive", "p3_injection", "knobs", "time_windows"}


# running them --------------------------------------------------------------------------------------------------------
class PartTimeout(BaseException):
    """Raised in a part that ran past its limit (a BaseException: the benchmarks' own `except Exception` let it by)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Stop the block after `seconds` (SIGALRM; the CUDA work in flight finishes, the Python after it does not)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"stopped after {seconds:.1f} s (twice its budget, or the run's time left)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_part(name: str, ctx: Context, remaining: float) -> dict[str, Any]:
    """One part under its limit; its exception is recorded (type, message, traceback), never raised."""
    budget = float(ctx.settings.budgets.get(name, 60))
    record: dict[str, Any] = {"budget_s": budget}
    goal = GOALS.get(name)
    if goal:
        record["goal"] = {"text": goal.text, "op": goal.op, "target": goal.target, "unit": goal.unit}
    if name in EARLIER:
        record["earlier_gpu_figure"] = EARLIER[name]
    if budget and remaining < budget / 2:
        record.update(status="skipped", error=f"{remaining:.0f} s left of --max-seconds, the budget is {budget:.0f} s")
        return record
    print(f"== {name} (budget {budget:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        with time_limit(min(2 * budget, remaining) if budget else remaining):
            out = PARTS[name](ctx)
        record.update(status="ok", **out)
    except (Exception, PartTimeout) as err:  # noqa: BLE001 - parts fail independently
        record.update(status="timeout" if isinstance(err, PartTimeout) else "error",
                      error=f"{type(err).__name__}: {err}"[:2000], traceback=traceback.format_exc()[-6000:])
        print(f"  {name} failed: {record['error']}", flush=True)
    except SystemExit as err:  # a benchmark's own sys.exit(message)
        record.update(status="error", error=f"SystemExit: {err}"[:2000])
    record["seconds"] = time.perf_counter() - t0
    if record["status"] != "ok" and name in ctx.partial:
        record["partial_figures"] = ctx.partial[name]
    ctx.partial.pop(name, None)
    record["over_budget"] = bool(budget) and record["seconds"] > budget
    if goal:
        value = record.pop("goal_value", None)
        record["goal"]["value"] = value
        record["goal"]["met"] = None if ctx.settings.smoke else goal.met(value)
    free_memory()
    return record


def machine() -> dict[str, Any]:
    """The machine and software the figures were taken on."""
    import bench_engine

    info: dict[str, Any] = {"host": socket.gethostname(), "python": platform.python_version(),
                            "platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu": bench_engine.cpu_name()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / GIB, 1), gpu_count=torch.cuda.device_count(),
                        capability=f"{p.major}.{p.minor}")
    except ImportError as err:
        info["torch"] = f"missing: {err}"
    for name in ("diffusers", "transformers", "open_clip_torch", "peft", "accelerate", "timm", "numpy", "pillow"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception:  # noqa: BLE001
            info[name] = None
    return info


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.3g}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the machine and date, one row per part, each goal's gap, the errors."""
    m = report["machine"]
    where = m.get("gpu") or f"CPU ({m['cpu']}, {m['cpu_count']} cores)"
    lines = [f"# styleprobe GPU check ({report['mode']})", "",
             f"{where}; {report['date']}; torch {m.get('torch')} (CUDA {m.get('cuda')}), diffusers {m.get('diffusers')}, "
             f"Python {m['python']}; {report['total_seconds']:.0f} s of a {report['max_seconds']:.0f} s limit "
             f"(planned {report['budget_total_s']:.0f} s)", "",
             "Every ratio's baseline was measured in this process." + (
                 " Smoke run: tiny sizes, one step; its figures check the script, not styleprobe's speed, and goals are "
                 "not judged." if report["mode"] == "smoke" else ""), "",
             "| part | status | s (budget) | result | ratios vs baseline (same run) | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["parts"].items():
        ratios = "; ".join(f"{k} {_num(v)}" for k, v in r.get("ratios", {}).items())
        g = r.get("goal")
        goal = f"{g['op']} {g['target']:g} {g['unit']} (got {_num(g.get('value'))})" if g else ""
        met = "" if not g else {True: "yes", False: "**no**", None: "-"}[g.get("met")]
        result = r.get("headline") or r.get("error", "")
        sec = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        lines.append(f"| {name} | {r['status']} | {sec} ({r['budget_s']:.0f}) | {result} | {ratios} | {goal} | {met} |")
    earlier = {k: r["earlier_gpu_figure"] for k, r in report["parts"].items() if "earlier_gpu_figure" in r}
    if earlier:
        lines += ["", "Earlier GPU figures (an H100, before the changes measured here; context, not a baseline): "
                  + "; ".join(f"{k} {v}" for k, v in earlier.items()) + "."]
    errors = [(n, r["error"]) for n, r in report["parts"].items() if r.get("error") and r["status"] != "ok"]
    if errors:
        lines += ["", "## Not measured", ""] + [f"- {n}: {e.splitlines()[0]}" for n, e in errors]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, one step: checks the script (CI)")
    p.add_argument("--only", default="", help=f"comma-separated parts to run, among {', '.join(PARTS)}")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out")
    p.add_argument("--device", default=None, help="default: cuda (smoke: cpu)")
    p.add_argument("--max-seconds", type=float, default=None, help="the whole run's limit (default 480; smoke 300)")
    args = p.parse_args(argv)
    for opt in ("only", "skip"):
        names = [n.strip() for n in getattr(args, opt).split(",") if n.strip()]
        unknown = [n for n in names if n not in PARTS]
        if unknown:
            p.error(f"--{opt}: unknown part(s) {', '.join(unknown)}; choose among {', '.join(PARTS)}")
        setattr(args, opt, names)
    return args


def choose(only: list[str], skip: list[str]) -> list[str]:
    """The parts to run, in PARTS' order: `only`'s (all when empty) less `skip`'s; an engine part brings the build."""
    chosen = [n for n in PARTS if (not only or n in only) and n not in skip]
    if any(n in NEEDS_BUILD for n in chosen) and "build" not in chosen and "build" not in skip:
        chosen.insert(next(i for i, n in enumerate(chosen) if n in NEEDS_BUILD), "build")
    return chosen


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = SMOKE if args.smoke else GPU
    if args.max_seconds:
        settings = replace(settings, max_seconds=args.max_seconds)
    device = args.device or ("cpu" if args.smoke else "cuda")
    chosen = choose(args.only, args.skip)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "gpu", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(), "device": device, "max_seconds": settings.max_seconds,
        "budget_total_s": sum(settings.budgets.get(n, 0) for n in chosen), "budgets_s": dict(settings.budgets),
        "settings": {k: v for k, v in settings.__dict__.items() if k != "budgets"},
        "goals": {k: g.__dict__ for k, g in GOALS.items()}, "parts": {}, "total_seconds": 0.0,
    }
    print(f"styleprobe GPU check ({report['mode']}) on {report['machine'].get('gpu') or report['machine']['cpu']}, "
          f"{report['date']}: {', '.join(chosen)}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        ctx = Context(settings, device, Path(scratch))
        for name in chosen:
            remaining = settings.max_seconds - (time.perf_counter() - start)
            report["parts"][name] = run_part(name, ctx, remaining)
            report["total_seconds"] = time.perf_counter() - start
            write(report, args.out)
        ctx.engine = None
    report["total_seconds"] = time.perf_counter() - start
    write(report, args.out)
    print()
    print(markdown(report))
    print(f"-> {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    return report


def write(report: dict[str, Any], out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


if __name__ == "__main__":
    result = main()
    sys.exit(0 if all(r["status"] in ("ok", "skipped") for r in result["parts"].values()) else 1)
