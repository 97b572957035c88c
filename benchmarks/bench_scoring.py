#!/usr/bin/env python
"""Time styleprobe's scoring metrics: images/s per metric and batch size, and all metrics in one batch.

For every metric (experiments/metrics/<name>.yaml, exactly as shipped) and every batch size of --batch-sizes:

  separate: the metric alone, `scorer.score(ScoreBatch(...))` with a fresh ScoreBatch per call, so nothing is
      shared with other metrics (each CLIP metric re-encodes the outputs with the CLIP image tower).
  together: all chosen metrics on one fresh ScoreBatch per call, the way the scoring stage runs them, so metrics
      on the same model (style_clip, text_clip, leak_clip; ref_dinov2 and any other DINOv2 metric) encode the outputs once.
  preprocess: each metric's preprocessing (resize, center-crop, normalise of the output images) on its own, timed
      right after that metric's measurement on the same images (its share of the metric's time is reported).

A measurement is ceil(--n-images / batch size) calls of one batch each (at least one call). Before it, one untimed
warm-up call at the same batch size; before a metric's first warm-up, one untimed priming call whose batch holds
every reference and prompt used (it loads the model and fills the per-process reference and text embedding
caches). Timed calls therefore hit those caches, as the calls of a sweep do after its first batches; only the
output images are encoded. Reported per metric: images/s per batch size and the speed-up over batch size 1
(or the smallest batch size given), measured in the same process; and together vs the sum of the separate times.

    .venv/bin/python benchmarks/bench_scoring.py --weights tiny
    .venv/bin/python benchmarks/bench_scoring.py --weights random --batch-sizes 1,8,32 --n-images 8

--weights random: the real architectures (open_clip ViT-L-14, DINO ViT-B/8, DINOv2 ViT-B/14, CSD ViT-L/14) with
random weights, built offline: real cost, meaningless scores. tiny: 2-layer stand-ins (machinery check only).
hub: the real weights (Hugging Face cache or network), e.g. on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METRICS_DIR = REPO / "experiments" / "metrics"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import PeakRSS, cpu_name, maxrss_bytes  # noqa: E402 - helpers of the sibling benchmark


def group_metrics(group: str) -> list[str]:
    """The metric names of a metric group's defaults list (experiments/metrics/default.yaml, quality.yaml)."""
    from omegaconf import OmegaConf

    return [str(x) for x in OmegaConf.to_container(OmegaConf.load(METRICS_DIR / f"{group}.yaml"))["defaults"]]


def default_metrics() -> list[str]:
    return group_metrics("default")


GROUPS = ("default", "quality")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", choices=["tiny", "random", "hub"], default="random",
                   help="tiny: offline stand-ins; random: real architectures, random weights; hub: real weights "
                        "(default: random)")
    p.add_argument("--metrics", default="default",
                   help="comma-separated names of experiments/metrics/*.yaml; 'default' expands to default.yaml's list "
                        "(style_clip,style_dino,style_csd,text_clip,leak_clip,ref_dinov2) and 'quality' quality.yaml's "
                        "(ImageReward, PickScore, HPS v2.1, LAION aesthetic), e.g. 'default,quality'")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--n-images", type=int, default=32,
                   help="images per measurement: ceil(N / batch size) calls, at least one (default 32)")
    p.add_argument("--image-size", type=int, default=1024, help="output image height = width (default 1024, SDXL's)")
    p.add_argument("--references", type=int, default=4, help="how many references of builtin:shapes (1-4, default 4)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each measurement (the median is reported)")
    p.add_argument("--no-together", action="store_true", help="skip the all-metrics-in-one-ScoreBatch measurements")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--dtype", default="float32", help="the scoring models' dtype: float32 | bfloat16 | float16 (scoring.dtype)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default .bench/scoring-<weights>.json)")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.n_images < 1 or args.repeats < 1:
        p.error("batch sizes, --n-images and --repeats must be positive")
    if not 1 <= args.references <= 4:
        p.error("--references must be 1 to 4 (builtin:shapes has 4)")
    names: list[str] = []
    for name in (s.strip() for s in args.metrics.split(",") if s.strip()):
        for n in group_metrics(name) if name in GROUPS else [name]:
            if not (METRICS_DIR / f"{n}.yaml").is_file():
                known = sorted(f.stem for f in METRICS_DIR.glob("*.yaml"))
                p.error(f"no metric {n!r}: not in {METRICS_DIR} ({', '.join(known)})")
            if n not in names:
                names.append(n)
    if not names:
        p.error("no metrics chosen")
    args.metric_names = names
    if args.out is None:
        args.out = REPO / ".bench" / f"scoring-{args.weights}.json"
    return args


def quiet() -> None:
    """styleprobe's own library quieting (as the CLI does), plus the deprecation warnings of a timing run."""
    import warnings

    from styleprobe.cli import _quiet_libraries

    _quiet_libraries()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def metric_configs(names: list[str]) -> dict[str, dict[str, Any]]:
    """The shipped configs: experiments/metrics/<name>.yaml, each holding {name: {scorer: kind, ...}}."""
    from omegaconf import OmegaConf

    configs: dict[str, dict[str, Any]] = {}
    for name in names:
        configs.update(OmegaConf.to_container(OmegaConf.load(METRICS_DIR / f"{name}.yaml"), resolve=True))
    return configs


# inputs -------------------------------------------------------------------------------------------
class Inputs:
    """Output images (a reference resized to --image-size plus fixed-seed noise), paired with references and prompts.

    Image j is paired with reference j % R and prompt j % P, as rows of a sweep would be.
    """

    def __init__(self, n: int, size: int, references: list[Any], prompts: list[Any], seed: int = 0):
        import numpy as np
        from PIL import Image

        self.refs = references
        self.ref_images = [r.load() for r in references]
        self.ref_ids = [r.digest for r in references]
        self.prompts = prompts
        rng = np.random.default_rng(seed)
        base = [np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.int16) for im in self.ref_images]
        self.images = []
        for j in range(n):
            noise = rng.integers(-24, 25, size=(size, size, 3), dtype=np.int16)
            self.images.append(Image.fromarray(np.clip(base[j % len(base)] + noise, 0, 255).astype(np.uint8), "RGB"))

    def batch(self, start: int, size: int, on_device: Any = None):
        """A fresh ScoreBatch (empty memo) of `size` outputs from index `start` (wrapping around); with `on_device`
        (a device) its preprocessing is the batched tensor path on that device, else PIL per image."""
        from styleprobe.metrics import ScoreBatch

        idx = [(start + i) % len(self.images) for i in range(size)]
        r = [j % len(self.refs) for j in idx]
        p = [j % len(self.prompts) for j in idx]
        return ScoreBatch(
            images=[self.images[j] for j in idx],
            references=[self.ref_images[i] for i in r],
            reference_ids=[self.ref_ids[i] for i in r],
            prompts=[self.prompts[i].prompt for i in p],
            contents=[self.refs[i].content for i in r],
            subjects=[self.prompts[i].subject for i in p],
            device=on_device,
            preprocess_on_device=on_device is not None,
        )

    def priming_batch(self):
        """One batch holding every reference and prompt (so every reference and text embedding gets cached)."""
        return self.batch(0, max(len(self.refs), len(self.prompts)))


def preprocess_of(scorer: Any) -> Any:
    """The Preprocess a scorer applies to output images (its model is loaded by now)."""
    from styleprobe.metrics.clip import _CLIPScorer
    from styleprobe.metrics.csd import StyleCSD
    from styleprobe.metrics.dino import StyleDINO

    if isinstance(scorer, _CLIPScorer):
        return scorer.clip().preprocess
    if isinstance(scorer, StyleDINO):
        return scorer.backbone().preprocess
    if isinstance(scorer, StyleCSD):
        return scorer.preprocess
    return getattr(scorer, "preprocess", None)


def preprocess_name(pre: Any) -> str:
    from styleprobe.metrics.preprocess import ResizeLongest

    if isinstance(pre, ResizeLongest):  # HPS's: the longer side, on the float tensor, then padding
        return f"longer side {pre.size} {pre.interpolation} (float), pad {pre.size}, mean {tuple(round(m, 3) for m in pre.mean)}"
    return f"resize {pre.resize} {pre.interpolation}, crop {pre.crop}, mean {tuple(round(m, 3) for m in pre.mean)}"


# timing -------------------------------------------------------------------------------------------
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_state() -> tuple[int, int]:
    """(embeddings held in the per-process reference/text caches, scoring models loaded so far)."""
    from styleprobe.metrics import base

    return sum(len(v) for v in base._EMBEDDINGS.values()), base.LOAD_COUNT["n"]


def measure(fn, calls: int, device) -> dict[str, Any]:
    """Run fn(call_index) `calls` times: wall and CPU seconds, load average, peak RSS and CUDA memory.

    Also how many reference/text embeddings and models the timed calls added (0 and 0 in the steady state).
    """
    import torch

    cuda = device.type == "cuda"
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    load_before = os.getloadavg()[0]
    cached_before, loads_before = cache_state()
    with PeakRSS() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        for c in range(calls):
            fn(c)
        sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    cached_after, loads_after = cache_state()
    return {
        "embeddings_computed_into_caches": cached_after - cached_before,
        "models_loaded": loads_after - loads_before,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "peak_rss_bytes": rss.peak_bytes,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


def summarise(runs: list[dict[str, Any]], calls: int, b: int) -> dict[str, Any]:
    sec = statistics.median(r["seconds"] for r in runs)
    cuda = [r["cuda_max_allocated_bytes"] for r in runs if r["cuda_max_allocated_bytes"] is not None]
    return {
        "batch_size": b,
        "calls": calls,
        "images": calls * b,
        "seconds_median": sec,
        "seconds_all": [r["seconds"] for r in runs],
        "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in runs),
        "images_per_s": calls * b / sec,
        "seconds_per_image": sec / (calls * b),
        "loadavg_1min_before_after": [r["loadavg_1min_before_after"] for r in runs],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "cuda_max_allocated_bytes": max(cuda) if cuda else None,
        "embeddings_computed_into_caches": sum(r["embeddings_computed_into_caches"] for r in runs),
        "models_loaded": sum(r["models_loaded"] for r in runs),
    }


def sweep(label: str, run_call, batch_sizes: list[int], n_images: int, repeats: int, device,
          preprocess=None) -> dict[str, Any]:
    """For each batch size: one untimed warm-up call, then `repeats` timed measurements (median reported).

    `preprocess(b, start)`, if given, is timed on the same images right after each timed measurement (interleaved,
    so that its share of the metric's time is read under the same machine load).
    """
    out: dict[str, Any] = {}
    for b in batch_sizes:
        calls = max(1, math.ceil(n_images / b))
        t0 = time.perf_counter()
        run_call(b, 0)
        sync(device)
        warmup = time.perf_counter() - t0
        runs, pre_runs = [], []
        for _ in range(repeats):
            runs.append(measure(lambda c, b=b: run_call(b, c * b), calls, device))
            if preprocess is not None:
                pre_runs.append(measure(lambda c, b=b: preprocess(b, c * b), calls, device))
        r = out[str(b)] = {**summarise(runs, calls, b), "warmup_seconds": warmup}
        misses = r["embeddings_computed_into_caches"] + r["models_loaded"]
        line = (
            f"  {label:14s} batch {b:3d}: {calls:3d} calls, {r['seconds_median']:8.2f} s wall, "
            f"{r['cpu_seconds_median']:8.2f} s CPU, {r['images_per_s']:8.3f} images/s (warm-up {warmup:.2f} s)"
        )
        if pre_runs:
            r["preprocess"] = summarise(pre_runs, calls, b)
            r["preprocess"]["share_of_metric_time"] = r["preprocess"]["seconds_median"] / r["seconds_median"]
            line += f"; preprocessing {r['preprocess']['images_per_s']:.3g} images/s ({r['preprocess']['share_of_metric_time']:.0%})"
        print(line + ", load avg %.1f -> %.1f" % tuple(runs[-1]["loadavg_1min_before_after"])
              + (f"; NOT steady: {misses} cache fills / model loads in the timed calls" if misses else ""), flush=True)
    return out


def together_call(scorers: list[Any], inputs: Inputs, on_device: Any = None) -> Any:
    """`run(b, start)`: every scorer on one fresh ScoreBatch of `b` outputs, as the scoring stage runs them; with
    `on_device` (a device) the batch is preprocessed there as tensors, else by PIL per image."""

    def run(b: int, start: int) -> None:
        batch = inputs.batch(start, b, on_device=on_device)
        for s in scorers:
            s.score(batch)

    return run


def add_speedups(per_b: dict[str, Any], base: int) -> None:
    for r in per_b.values():
        r["speedup_vs_batch_%d" % base] = r["images_per_s"] / per_b[str(base)]["images_per_s"]
        if "preprocess" in r:
            r["preprocess"]["speedup_vs_batch_%d" % base] = (
                r["preprocess"]["images_per_s"] / per_b[str(base)]["preprocess"]["images_per_s"])


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    import numpy as np  # noqa: F401 - fail early if missing
    import open_clip
    import torch
    import torchvision
    import transformers

    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set
    from styleprobe.errors import StyleprobeError
    from styleprobe.metrics import build_scorers, release_models
    from styleprobe.models.devices import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configs = metric_configs(args.metric_names)
    from styleprobe.run.scoring import scoring_dtype

    scorers = build_scorers(configs, device, args.weights, dtype=scoring_dtype(args.dtype))
    references = load_style_set("builtin:shapes")[: args.references]
    prompts = load_prompts("builtin:objects")
    batch_sizes = sorted(set(args.batch_sizes))
    base = 1 if 1 in batch_sizes else batch_sizes[0]
    n_make = max(max(b, math.ceil(args.n_images / b) * b) for b in batch_sizes)
    t0 = time.perf_counter()
    inputs = Inputs(n_make, args.image_size, references, prompts)
    make_seconds = time.perf_counter() - t0
    groups: dict[str, list[str]] = {}
    for s in scorers:
        groups.setdefault(repr(s._model_key()), []).append(s.name)
    print(
        f"scoring {len(scorers)} metrics ({', '.join(s.name for s in scorers)}) with {args.weights} weights on {device} "
        f"({device_name(device)}); outputs {args.image_size}x{args.image_size}, {len(references)} references, "
        f"{len(prompts)} prompts; batch sizes {batch_sizes}, ~{args.n_images} images per measurement, "
        f"{args.repeats} repeat(s); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    release_models()  # every model load and cache fill happens below, in the priming calls

    results: dict[str, Any] = {"metrics": {}}
    try:
        for s in scorers:
            t0 = time.perf_counter()
            s.score(inputs.priming_batch())
            sync(device)
            prime = time.perf_counter() - t0
            print(f"{s.name}: {s.describe_model()}; priming call (model load if new, reference/text caches) {prime:.1f} s",
                  flush=True)
            pre = preprocess_of(s)
            per_b = sweep(s.name, lambda b, start, s=s: s.score(inputs.batch(start, b)), batch_sizes, args.n_images,
                          args.repeats, device,
                          preprocess=None if pre is None else lambda b, start, pre=pre: pre(inputs.batch(start, b).images))
            add_speedups(per_b, base)
            results["metrics"][s.name] = {
                "scorer": s.kind, "model": s.describe_model(), "config": configs[s.name], "priming_seconds": prime,
                "preprocess": None if pre is None else preprocess_name(pre), "batch_sizes": per_b,
            }
        if not args.no_together and len(scorers) > 1:
            print(f"together: {len(scorers)} metrics on one ScoreBatch per call", flush=True)

            per_b = sweep("together", together_call(scorers, inputs), batch_sizes, args.n_images, args.repeats, device)
            add_speedups(per_b, base)
            for key, r in per_b.items():
                separate = sum(results["metrics"][s.name]["batch_sizes"][key]["seconds_per_image"] for s in scorers)
                r["sum_of_separate_seconds_per_image"] = separate
                r["sum_of_separate_images_per_s"] = 1 / separate
                r["speedup_vs_sum_of_separate"] = separate / r["seconds_per_image"]
            results["together"] = {"metrics": [s.name for s in scorers], "shared_models": groups, "batch_sizes": per_b}

            # the default set alone, in the same process: what the added metrics (e.g. the quality group) cost on top
            default = [s for s in scorers if s.name in default_metrics()]
            if len(default) == len(default_metrics()) < len(scorers):
                print(f"together: the default set only ({len(default)} metrics)", flush=True)
                per_d = sweep("together/default", together_call(default, inputs), batch_sizes, args.n_images,
                              args.repeats, device)
                add_speedups(per_d, base)
                for key, r in per_d.items():
                    r["all_vs_default_seconds_ratio"] = per_b[key]["seconds_per_image"] / r["seconds_per_image"]
                results["together_default"] = {"metrics": [s.name for s in default], "batch_sizes": per_d}

            # the same, with preprocessing as batched tensor ops on the scoring device (scoring.preprocess=tensor)
            print("together, tensor preprocessing on the scoring device", flush=True)
            for s in scorers:  # fill the reference caches of the tensor path
                s.score(inputs.batch(0, max(len(inputs.refs), len(inputs.prompts)), on_device=device))

            per_t = sweep("together/tensor", together_call(scorers, inputs, device), batch_sizes, args.n_images, args.repeats, device)
            add_speedups(per_t, base)
            for key, r in per_t.items():
                r["speedup_vs_pil"] = r["images_per_s"] / per_b[key]["images_per_s"]
            results["together_tensor_preprocessing"] = {"batch_sizes": per_t}
        pres = {preprocess_name(pre): pre for pre in (preprocess_of(s) for s in scorers) if pre is not None}
        results["preprocess_alone"] = {}
        for name, pre in pres.items():  # before (PIL per image) and after (batched tensor ops), same images, same run
            pil = sweep("pil " + name.split(",")[0], lambda b, start, pre=pre: pre(inputs.batch(start, b).images),
                        batch_sizes, args.n_images, args.repeats, device)
            ten = sweep("tensor " + name.split(",")[0],
                        lambda b, start, pre=pre: pre.tensors(inputs.batch(start, b).images, device),
                        batch_sizes, args.n_images, args.repeats, device)
            add_speedups(pil, base)
            add_speedups(ten, base)
            results["preprocess_alone"][name] = {
                "pil": pil, "tensor": ten,
                "speedup": {k: ten[k]["images_per_s"] / pil[k]["images_per_s"] for k in pil},
            }
    except StyleprobeError as err:
        sys.exit(f"bench_scoring: {err}")

    # table -----------------------------------------------------------------------------------------
    def row(label: str, per_b: dict[str, Any]) -> None:
        cells = []
        for b in batch_sizes:
            r = per_b[str(b)]
            s = f"{r['images_per_s']:.4g}" if r["images_per_s"] < 1e4 else f"{r['images_per_s']:.0f}"
            if b != base:
                s += f" ({r['speedup_vs_batch_%d' % base]:.2f}x)"
            cells.append(f"{s:>17s}")
        print(f"{label:34s}" + "".join(cells))

    print()
    print(f"images/s ({args.weights} weights, {device}, {args.image_size}px outputs); (x) = speed-up over batch size {base}")
    print(f"{'':34s}" + "".join(f"{'batch ' + str(b):>16s}" for b in batch_sizes))
    for name, m in results["metrics"].items():
        row(name, m["batch_sizes"])
    if "together" in results:
        t = results["together"]["batch_sizes"]
        print(f"{'sum of separate (images/s)':34s}" + "".join(f"{t[str(b)]['sum_of_separate_images_per_s']:16.3g}" for b in batch_sizes))
        row(f"together ({len(scorers)} in one ScoreBatch)", t)
        print(f"{'together vs sum of separate':34s}" + "".join(f"{t[str(b)]['speedup_vs_sum_of_separate']:15.2f}x" for b in batch_sizes))
    if "together_default" in results:
        d = results["together_default"]["batch_sizes"]
        row(f"together, default set only ({len(results['together_default']['metrics'])})", d)
        print(f"{'all / default set (s per image)':34s}" + "".join(f"{d[str(b)]['all_vs_default_seconds_ratio']:15.2f}x" for b in batch_sizes))
    print(f"preprocessing alone (resize, crop, normalise the {args.image_size}px outputs), timed right after each metric:")
    for name, m in results["metrics"].items():
        if m["preprocess"] is None:
            continue
        pre_b = {k: v["preprocess"] for k, v in m["batch_sizes"].items()}
        shares = "".join(f"{format(pre_b[str(b)]['share_of_metric_time'], '.0%') + ' of metric':>16s}" for b in batch_sizes)
        row(f"  for {name} ({m['preprocess'].split(',')[0].removeprefix('resize ')})", pre_b)
        print(f"{'':34s}" + shares)
    if "together_tensor_preprocessing" in results:
        t = results["together_tensor_preprocessing"]["batch_sizes"]
        row("together, tensor preprocessing", t)
        print(f"{'tensor vs PIL preprocessing':34s}" + "".join(f"{t[str(b)]['speedup_vs_pil']:15.2f}x" for b in batch_sizes))
    for name, r in results.get("preprocess_alone", {}).items():
        print(f"preprocessing alone, {name}: PIL -> tensor " + ", ".join(
            f"batch {b}: {r['pil'][str(b)]['images_per_s']:.3g} -> {r['tensor'][str(b)]['images_per_s']:.3g} images/s "
            f"({r['speedup'][str(b)]:.2f}x)" for b in batch_sizes))
    shared = {k: v for k, v in groups.items() if len(v) > 1}
    print("output embeddings shared in 'together': " + ("; ".join(", ".join(v) for v in shared.values()) or "none"))
    print(f"process peak RSS (getrusage ru_maxrss): {maxrss_bytes() / 2**30:.2f} GiB")

    out = {
        "weights": args.weights,
        "dtype": args.dtype,
        "metric_names": args.metric_names,
        "device": str(device),
        "device_name": device_name(device),
        "image_size": args.image_size,
        "references": len(references),
        "prompts": len(prompts),
        "batch_sizes": batch_sizes,
        "baseline_batch_size": base,
        "n_images": args.n_images,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "open_clip": open_clip.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "input_making_seconds": make_seconds,
        "process_maxrss_bytes": maxrss_bytes(),
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
