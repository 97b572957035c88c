#!/usr/bin/env python
"""Time the engine with denoising windows against the same items without them, in one process.

The same patterns, references, prompts and seeds are planned twice: once with the full window (today's items) and
once crossed with `--windows` (each item then switches its pattern on and off per step through `Method.at_step`).
Both plans run through `Engine.run_batch` in the batches `Engine.generate` makes, after one untimed warm-up call.
Reported: images/s of each, their ratio (windows / full: the per-step switching's cost) and the pipeline calls per
image of each (windows must not break batching: IP-Adapter puts items of different windows in one call).

    .venv/bin/python benchmarks/bench_windows.py                          # tiny model, IP-Adapter, one_hot:window:4
    .venv/bin/python benchmarks/bench_windows.py --model sdxl --windows one_hot:window:5 --steps 4

The tiny model's numbers check the machinery, not real-model speed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402


def windowed_items(setup: Any, windows: str) -> list[Any]:
    """`setup`'s items (bench_engine.prepare) crossed with the windows of `windows` (e.g. one_hot:window:4)."""
    from styleprobe.run.plan import build_plan
    from styleprobe.run.windows import check_steps, expand_windows

    expanded = expand_windows([w for w in windows.split(",") if w.strip()], "--windows")
    check_steps(expanded, setup.steps, "--windows")
    entries = [replace(e, windows=expanded) for e in setup.entries]
    return build_plan(model=setup.spec, dtype=setup.dtype_name, entries=entries, references=setup.references,
                      prompts=setup.prompts, seeds=sorted({it.seed for it in setup.items}))


def calls(items: list[Any], batch_size: int) -> int:
    """Pipeline calls the engine makes for these items at this batch size."""
    from styleprobe.run.engine import batch_order

    return sum(math.ceil(len(g) / batch_size) for g in batch_order(items))


def compare(setup: Any, windows: str, batch_size: int) -> dict[str, Any]:
    """Full-window items against the same items crossed with `windows`: images/s, calls per image, their ratio."""
    model = setup.model
    plans = {"full": setup.items, "windows": windowed_items(setup, windows)}
    bench_engine.run_engine(model, plans["windows"][:1], batch_size, "run_batch")  # warm-up (and the adapter)
    out: dict[str, Any] = {}
    for name, items in plans.items():
        _, m = bench_engine.timed(lambda: bench_engine.run_engine(model, items, batch_size, "run_batch"), model.device)
        n, c = len(items), calls(items, batch_size)
        out[name] = {"images": n, "calls": c, "calls_per_image": c / n, "seconds": m["seconds"],
                     "images_per_s": n / m["seconds"], "cuda_max_allocated_bytes": m["cuda_max_allocated_bytes"]}
    out["windows_spec"] = windows
    out["windows / full images_per_s"] = out["windows"]["images_per_s"] / out["full"]["images_per_s"]
    out["windows / full calls_per_image"] = out["windows"]["calls_per_image"] / out["full"]["calls_per_image"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", default="one_hot:window:4", help="the windows to cross (default one_hot:window:4)")
    args, rest = p.parse_known_args(argv)
    engine_args = bench_engine.parse_args(rest)
    if "--out" not in rest:
        engine_args.out = bench_engine.REPO / ".bench" / f"windows-{Path(engine_args.preset or engine_args.model).stem}.json"
    bench_engine.quiet()
    setup = bench_engine.prepare(engine_args)
    result = compare(setup, args.windows, engine_args.batch_size)
    result.update({"model": setup.spec.name, "device": str(setup.model.device), "dtype": setup.dtype_name,
                   "resolution": setup.resolution, "steps": setup.steps, "batch_size": engine_args.batch_size,
                   "cpu": bench_engine.cpu_name()})
    for name in ("full", "windows"):
        r = result[name]
        print(f"{name:8s} {r['images']:4d} images {r['calls']:3d} calls ({r['calls_per_image']:.3f} per image) "
              f"{r['seconds']:8.2f} s  {r['images_per_s']:.3f} images/s")
    print(f"windows / full: {result['windows / full images_per_s']:.3f}x images/s, "
          f"{result['windows / full calls_per_image']:.3f}x calls per image")
    engine_args.out.parent.mkdir(parents=True, exist_ok=True)
    engine_args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
