#!/usr/bin/env python
"""Time styleprobe's engine against the plain-diffusers loop a researcher would write, in one process.

Both paths run on the same loaded pipeline with the same settings, items and seeds:

  baseline ("diffusers loop"): one `pipe(prompt=..., ip_adapter_image=<PIL>, ...)` call per item, under
      diffusers' own IP-Adapter processors with `pipe.set_ip_adapter_scale(<pattern>)`; every call
      re-encodes the prompt and the reference image.
  engine: a fresh `styleprobe.run.engine.Engine` (so its encode-once caches start empty and their cost is
      counted) running the same items in batches of --batch-size, ordered as `Engine.generate` orders them
      (`--engine-path generate` times `Engine.generate` into a temporary Store instead, PNG writes included).

Each path gets one untimed single-image warm-up call first. Reported per path: wall seconds, images/s, peak RSS and, on
CUDA, peak allocated GPU memory; plus the speed-up (baseline / engine) and the max abs pixel difference
between the two paths' images of the same item (they should agree closely: same weights, same seeds).

    .venv/bin/python benchmarks/bench_engine.py --model tiny
    .venv/bin/python benchmarks/bench_engine.py --model sdxl --resolution 256 --steps 2 --patterns 13

`--model sdxl` is the random-weight model with SDXL's real UNet and VAE (built on first use into
$STYLEPROBE_CACHE/random-sdxl-v1, minutes and ~14 GB of disk); `--preset NAME` loads a real preset from
experiments/model/NAME.yaml instead (e.g. `--preset sdxl` on a GPU with the weights in the HF cache).
The tiny model's numbers check the machinery, not the science (or real-model speed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATTERNS = "none,all,one_hot:module"  # 11 modules on SDXL-shaped UNets + all + none = 13
DEFAULTS = {"tiny": {"resolution": 64, "steps": 4}, "sdxl": {"resolution": 256, "steps": 2}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "sdxl"], default="tiny",
                   help="tiny: the embedded test model; sdxl: random weights, SDXL's real UNet/VAE (default: tiny)")
    p.add_argument("--preset", default=None,
                   help="a real model preset instead of --model: a name in experiments/model/ or a YAML path")
    p.add_argument("--resolution", type=int, default=None, help="image height = width (default 64 tiny / 256 sdxl)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 4 tiny / 2 sdxl)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the preset's, 5.0)")
    p.add_argument("--patterns", default=DEFAULT_PATTERNS,
                   help="a count N (the first N of the default sweep) or comma-separated pattern specs, e.g. "
                        f"'none,all,style' (default {DEFAULT_PATTERNS!r} = 13 patterns on SDXL shapes)")
    p.add_argument("--references", type=int, default=1, help="how many references of builtin:shapes_small")
    p.add_argument("--prompts", type=int, default=1, help="how many prompts of builtin:objects_small")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds (0, 1, ...)")
    p.add_argument("--batch-size", type=int, default=8, help="engine batch size (samples per pipeline call)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each path (the median is reported)")
    p.add_argument("--engine-path", choices=["run_batch", "generate"], default="run_batch",
                   help="run_batch: images in memory; generate: Engine.generate into a temp Store (PNG writes)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16")
    p.add_argument("--show-diffs", type=int, default=3, help="print the pixel difference of this many items")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default .bench/engine-<model>.json)")
    args = p.parse_args(argv)
    name = args.preset or args.model
    defaults = DEFAULTS.get(args.model if not args.preset else "", {})
    if args.resolution is None:
        args.resolution = defaults.get("resolution")
    if args.steps is None:
        args.steps = defaults.get("steps")
    if args.out is None:
        args.out = REPO / ".bench" / f"engine-{Path(name).stem}.json"
    return args


def quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


# model ----------------------------------------------------------------------------------------------
def model_spec(args: argparse.Namespace):
    """(ModelSpec, preset dict) for --preset, or for the tiny / random-SDXL model."""
    from omegaconf import OmegaConf

    from styleprobe.models.presets import AdapterSpec, ModelSpec

    if args.preset or args.model == "tiny":
        path = Path(args.preset or "tiny")
        if not path.suffix:
            path = REPO / "experiments" / "model" / f"{path}.yaml"
        preset = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        spec = ModelSpec.from_config(preset)
        if args.dtype != "auto":
            spec = ModelSpec(**{**spec.__dict__, "dtype": args.dtype})
        return spec, preset
    from styleprobe.models.tiny import ensure_random_sdxl

    root = ensure_random_sdxl(args.model)
    spec = ModelSpec(
        name=f"random-{args.model}",
        family="sdxl",
        base=str(root / "stable-diffusion-xl-base"),
        adapter=AdapterSpec(source=str(root / "IP-Adapter"), subfolder="sdxl_models",
                            weight_name="ip-adapter_sdxl.safetensors"),
        dtype=args.dtype,
    )
    spec.validate()
    return spec, {"resolution": 1024, "steps": 30, "guidance": 5.0}


# memory -------------------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process during a block.

    Linux: resets the kernel's high-water mark (/proc/self/clear_refs "5") and reads VmHWM after; else a
    sampling thread. `getrusage` is also kept: its ru_maxrss is the process-lifetime peak, never reset.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm = False

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def __enter__(self) -> "PeakRSS":
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm = self._status("VmHWM") is not None
        except OSError:
            self._hwm = False
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._status("VmRSS") or 0)
            self._stop.wait(0.02)

    def __exit__(self, *exc: Any) -> None:
        if self._hwm:
            self.peak_bytes = self._status("VmHWM") or 0
        else:
            self._stop.set()
            self._thread.join()


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux: KiB


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows: the machine a CPU figure was taken on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the two paths ------------------------------------------------------------------------------------
def run_baseline(model, items, sampler, layer_map, references) -> dict[str, Any]:
    """The plain-diffusers loop: one call per item, prompt and reference re-encoded every time."""
    import torch

    from styleprobe.methods.ip_adapter.injection import native_processors
    from styleprobe.models.layers import native_scale_config

    pipe = model.pipe
    images = {}
    with native_processors(pipe.unet):
        for it in items:
            pipe.set_ip_adapter_scale(native_scale_config([s * it.knobs.scale for s in it.pattern.scales], layer_map))
            out = pipe(
                prompt=it.prompt.prompt,
                ip_adapter_image=references[it.reference.digest],
                generator=torch.Generator("cpu").manual_seed(int(it.seed)),
                num_inference_steps=sampler.steps,
                guidance_scale=sampler.guidance,
                height=sampler.height,
                width=sampler.width,
            )
            images[it.key] = out.images[0]
    return images


def forget(model) -> None:
    """Empty every per-process cache (prompts; each method's encodings and inversions), so a timed run pays for them."""
    model.prompts.clear()
    for state in model.attached.values():
        for name in ("references", "contents", "inversions"):
            cache = getattr(state, name, None)
            if cache is not None:
                cache.clear()


def run_engine(model, items, batch_size, path: str) -> dict[str, Any]:
    """The engine over the items, with empty encoding caches, in the batches `generate` would make."""
    from styleprobe.run.engine import Engine, batch_order

    forget(model)
    engine = Engine(model, batch_size)
    if path == "generate":
        from PIL import Image

        from styleprobe.run.store import Store

        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            store = Store(tmp)
            engine.generate(items, store, run_id="bench")
            table = store.table()
            images = {}
            for key, rel in zip(table["key"], table["image_path"]):
                with Image.open(store.root / rel) as im:
                    images[key] = im.copy()
        return images
    images = {}
    for group in batch_order(items):
        for b in range(0, len(group), batch_size):
            batch = group[b : b + batch_size]
            for it, im in zip(batch, engine.run_batch(batch), strict=True):
                images[it.key] = im
    return images


def timed(fn, device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, measurements): wall and process CPU seconds, peak RSS, peak CUDA memory, load average.

    CPU seconds and the 1-minute load average help read wall times taken on a shared machine: other
    processes inflate wall time more than this process's CPU time.
    """
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    load_before = os.getloadavg()[0]
    with PeakRSS() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        if cuda:
            torch.cuda.synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return result, {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_bytes": rss.peak_bytes,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
    }


def pixel_diffs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    import numpy as np

    return {
        k: int(np.abs(np.asarray(a[k], dtype=np.int16) - np.asarray(b[k], dtype=np.int16)).max()) for k in a
    }


def prepare(args: argparse.Namespace, model: Any = None) -> SimpleNamespace:
    """The loaded model with IP-Adapter attached, the sampler, the layer map and the planned items of `args`.

    Split from `main` so that other benchmarks (gpu_check.py) time the same items on one model they load once;
    `model` is such an already loaded model (its spec must be `model_spec(args)`'s).
    """
    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set
    from styleprobe.methods.base import method, parse_entries
    from styleprobe.models import loading
    from styleprobe.models.layers import LayerMap, native_scale_config
    from styleprobe.run.engine import Engine
    from styleprobe.run.plan import build_plan
    from styleprobe.run.sampler import Sampler

    spec, preset = model_spec(args)
    resolution = args.resolution or int(preset["resolution"])
    steps = args.steps or int(preset["steps"])
    guidance = args.guidance if args.guidance is not None else float(preset.get("guidance", 5.0))
    sampler = Sampler(steps=steps, guidance=guidance, height=resolution, width=resolution)

    t0 = time.perf_counter()
    model = model or loading.load(spec, args.device)
    Engine(model).use(method("ip_adapter"), sampler)  # loads the adapter
    load_seconds = time.perf_counter() - t0
    pipe = model.pipe
    layer_map = LayerMap.from_unet(pipe.unet)

    count = int(args.patterns) if args.patterns.strip().isdigit() else None
    specs = DEFAULT_PATTERNS.split(",") if count else [s for s in args.patterns.split(",") if s.strip()]
    entries = parse_entries(
        {"ip_adapter": {}}, patterns=specs, presets={}, model={},
        sampler={"steps": steps, "guidance": guidance, "height": resolution, "width": resolution},
        layer_map=lambda site: LayerMap.from_unet(pipe.unet, site),
    )
    entries = [replace(e, patterns=e.patterns[:count]) for e in entries]
    patterns = list(entries[0].patterns)
    for p in patterns:
        try:
            native_scale_config(p.scales, layer_map)
        except ValueError as err:
            sys.exit(f"pattern {p.name!r} has no diffusers form ({err}); the baseline cannot run it")
    references = load_style_set("builtin:shapes_small")[: args.references]
    prompts = load_prompts("builtin:objects_small")[: args.prompts]
    dtype_name = str(model.dtype).removeprefix("torch.")
    items = build_plan(model=spec, dtype=dtype_name, entries=entries, references=references, prompts=prompts,
                       seeds=list(range(args.seeds)))
    ref_images = {r.digest: r.load() for r in references}  # decoded once, as a researcher would
    return SimpleNamespace(spec=spec, model=model, sampler=sampler, resolution=resolution, steps=steps, entries=entries,
                           guidance=guidance, layer_map=layer_map, patterns=patterns, references=references,
                           prompts=prompts, dtype_name=dtype_name, items=items, ref_images=ref_images,
                           load_seconds=load_seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    import diffusers
    import numpy as np
    import torch

    setup = prepare(args)
    spec, model, sampler, layer_map = setup.spec, setup.model, setup.sampler, setup.layer_map
    resolution, steps, guidance, patterns = setup.resolution, setup.steps, setup.guidance, setup.patterns
    references, prompts, dtype_name, items = setup.references, setup.prompts, setup.dtype_name, setup.items
    ref_images, load_seconds = setup.ref_images, setup.load_seconds
    n = len(items)
    print(
        f"model {spec.name} on {model.device} ({dtype_name}), {resolution}x{resolution}, {steps} steps, "
        f"guidance {guidance}; {len(references)} ref x {len(prompts)} prompt x {args.seeds} seed x "
        f"{len(patterns)} patterns = {n} images; batch {args.batch_size}; torch threads {torch.get_num_threads()}; "
        f"load {load_seconds:.1f} s",
        flush=True,
    )

    # untimed warm-ups: one single-image call of each path (the engine's on a throwaway Engine, so the timed
    # one starts with empty encoding caches)
    t0 = time.perf_counter()
    run_baseline(model, items[:1], sampler, layer_map, ref_images)
    t1 = time.perf_counter()
    run_engine(model, items[:1], args.batch_size, "run_batch")
    warmup_seconds = {"baseline": t1 - t0, "engine": time.perf_counter() - t1}
    print(f"warm-up (1 image each): baseline {warmup_seconds['baseline']:.1f} s, engine {warmup_seconds['engine']:.1f} s",
          flush=True)

    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "engine": []}
    images: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        for path, fn in (
            ("baseline", lambda: run_baseline(model, items, sampler, layer_map, ref_images)),
            ("engine", lambda: run_engine(model, items, args.batch_size, args.engine_path)),
        ):
            images[path], m = timed(fn, model.device)
            runs[path].append(m)
            print(
                f"  repeat {r + 1}/{args.repeats} {path:8s} {m['seconds']:9.2f} s wall, {m['cpu_seconds']:9.2f} s CPU, "
                "load avg %.1f -> %.1f" % tuple(m["loadavg_1min_before_after"]),
                flush=True,
            )

    summary: dict[str, Any] = {}
    for path, rs in runs.items():
        sec = statistics.median(x["seconds"] for x in rs)
        cuda_vals = [x["cuda_max_allocated_bytes"] for x in rs if x["cuda_max_allocated_bytes"] is not None]
        summary[path] = {
            "seconds_median": sec,
            "seconds_all": [x["seconds"] for x in rs],
            "cpu_seconds_median": statistics.median(x["cpu_seconds"] for x in rs),
            "loadavg_1min_before_after": [x["loadavg_1min_before_after"] for x in rs],
            "images_per_s": n / sec,
            "peak_rss_bytes": max(x["peak_rss_bytes"] for x in rs),
            "cuda_max_allocated_bytes": max(cuda_vals) if cuda_vals else None,
        }
    speedup = summary["baseline"]["seconds_median"] / summary["engine"]["seconds_median"]
    cpu_speedup = summary["baseline"]["cpu_seconds_median"] / summary["engine"]["cpu_seconds_median"]
    diffs = pixel_diffs(images["baseline"], images["engine"])
    first = np.asarray(images["engine"][items[0].key], dtype=np.float32)

    gib = 2**30
    print()
    print(f"{'path':10s} {'wall s':>9s} {'images/s':>9s} {'CPU s':>9s} {'peak RSS GiB':>13s} {'CUDA peak GiB':>14s}")
    for path in ("baseline", "engine"):
        s = summary[path]
        cuda = "-" if s["cuda_max_allocated_bytes"] is None else f"{s['cuda_max_allocated_bytes'] / gib:.2f}"
        print(
            f"{path:10s} {s['seconds_median']:9.2f} {s['images_per_s']:9.3f} {s['cpu_seconds_median']:9.2f} "
            f"{s['peak_rss_bytes'] / gib:13.2f} {cuda:>14s}"
        )
    print(f"speed-up (baseline / engine): {speedup:.2f}x wall, {cpu_speedup:.2f}x CPU time")
    print(f"process peak RSS (getrusage ru_maxrss): {maxrss_bytes() / gib:.2f} GiB")
    by_key = {it.key: it for it in items}
    for key in list(diffs)[: args.show_diffs]:
        it = by_key[key]
        print(f"  max |pixel diff| {it.pattern.name:40s} seed {it.seed}: {diffs[key]}")
    print(f"max |pixel diff| over all {n} images: {max(diffs.values())} (0-255); "
          f"mean of per-image max: {statistics.mean(diffs.values()):.2f}; "
          f"engine image 0: mean {first.mean():.1f}, std {first.std():.1f}")

    result = {
        "model": spec.name,
        "base": spec.base,
        "device": str(model.device),
        "device_name": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": dtype_name,
        "resolution": resolution,
        "steps": steps,
        "guidance": guidance,
        "patterns": [p.name for p in patterns],
        "references": len(references),
        "prompts": len(prompts),
        "seeds": args.seeds,
        "images": n,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "engine_path": args.engine_path,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()},
        "load_seconds": load_seconds,
        "warmup_seconds": warmup_seconds,
        "baseline": summary["baseline"],
        "engine": summary["engine"],
        "speedup": speedup,
        "speedup_cpu_time": cpu_speedup,
        "process_maxrss_bytes": maxrss_bytes(),
        "pixel_diff_max": max(diffs.values()),
        "pixel_diff_per_item": {by_key[k].pattern.name + f"/seed{by_key[k].seed}/{by_key[k].reference.style}/{by_key[k].prompt.subject}": v for k, v in diffs.items()},
        "engine_image0_mean_std": [float(first.mean()), float(first.std())],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
