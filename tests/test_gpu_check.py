"""benchmarks/gpu_check.py: its smoke mode runs every part and writes the JSON and markdown a GPU run would, so the
check is ready (and has not rotted) whenever a GPU machine is lent; parts fail and time out independently."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache_dir):
    """One smoke run in a fresh process (the CLI as the GPU machine runs it), on the session's tiny-model cache."""
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "STYLEPROBE_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc.stdout, seconds


def test_the_smoke_run_measures_every_part_with_numbers(smoke):
    report, md, stdout, seconds = smoke
    module = _module()
    assert list(report["parts"]) == list(module.PARTS)
    assert report["mode"] == "smoke" and report["date"] and report["machine"]["cpu"] and report["machine"]["torch"]
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
        assert part["seconds"] >= 0 and part["budget_s"] > 0
        numbers = _numbers(part["figures"])
        assert numbers and all(math.isfinite(x) for x in numbers), name
        if name not in ("build", "p5_memory"):  # no CUDA peak on the CPU: p5's ratios are measured on a GPU only
            assert part["ratios"] and all(isinstance(v, float) and v > 0 for v in part["ratios"].values()), name
    knobs = report["parts"]["knobs"]["figures"]["knobs"]
    assert set(knobs) == {"plain", "channels_last", "sdpa=math", "compile"} and all("error" not in k for k in knobs.values())
    rates = report["parts"]["p4_scoring"]["figures"]["rates"]
    assert set(rates) == {"float32/pil", "float32/tensor", "bfloat16/pil", "bfloat16/tensor"}
    assert all(r["steady"] for r in rates.values())
    assert set(report["parts"]["p5_memory"]["figures"]["per_batch"]) == {"1", "4"}
    assert set(report["parts"]["lora_fp16"]["figures"]["modes"]) == {"fp32", "fp16", "fp16_unscaled"}
    print(f"smoke run: {seconds:.1f} s")


def test_each_goal_is_stated_with_its_value_and_not_judged_on_tiny_sizes(smoke):
    report, md, stdout, _ = smoke
    goals = {name: p["goal"] for name, p in report["parts"].items() if "goal" in p}
    assert {k: (g["op"], g["target"]) for k, g in goals.items()} == {
        "p1_engine": ("<=", 0.8), "p3_injection": ("<=", 1.02), "p4_scoring": (">=", 500.0), "p5_memory": ("<=", 24.0)}
    assert all(g["met"] is None for g in goals.values())  # a smoke run's figures are not the goals' sizes
    assert all(isinstance(goals[k]["value"], float) for k in ("p1_engine", "p3_injection", "p4_scoring"))
    for name in report["parts"]:
        assert f"| {name} |" in md and f"| {name} |" in stdout  # the table is printed and written
    assert "measured in this process" in md and report["machine"]["cpu"] in md and report["date"] in md


def test_the_planned_gpu_budget_fits_eight_minutes():
    module = _module()
    assert set(module.GPU_BUDGETS) == set(module.PARTS) == set(module.SMOKE_BUDGETS)
    assert module.BUDGET_TOTAL <= 480 and module.GPU.max_seconds <= 480
    assert module.GPU_BUDGETS["build"] > 0 and module.GPU_BUDGETS["p5_memory"] > 0  # the real-size builds counted


def test_only_and_skip_choose_parts_and_the_engine_parts_bring_the_build():
    module = _module()
    assert module.choose(["p3_injection", "p4_scoring"], []) == ["build", "p3_injection", "p4_scoring"]
    assert module.choose(["time_windows"], []) == ["build", "time_windows"]
    assert module.choose([], ["knobs", "lora_fp16", "time_windows"]) == [
        "p5_memory", "build", "p1_engine", "p2_naive", "p3_injection", "p4_scoring"]
    assert module.choose(["p4_scoring"], []) == ["p4_scoring"]
    with pytest.raises(SystemExit):
        module.parse_args(["--out", "x", "--only", "p9"])


def test_a_failing_or_overlong_part_is_recorded_and_the_next_one_runs(monkeypatch, tmp_path):
    module = _module()

    def broken(ctx):
        raise ValueError("no such backend")

    def slow(ctx):
        ctx.partial["knobs"] = {"knobs": {"plain": {"seconds_per_image": 1.0}}}
        time.sleep(5)
        return {"figures": {}, "ratios": {}}

    def fine(ctx):
        return {"figures": {"x": 1.0}, "ratios": {"x / y": 2.0}, "headline": "fine", "goal_value": 0.5}

    monkeypatch.setattr(module, "PARTS", {"p1_engine": broken, "knobs": slow, "p3_injection": fine})
    settings = module.replace(module.SMOKE, budgets={"p1_engine": 10, "knobs": 0.2, "p3_injection": 10}, smoke=False)
    ctx = module.Context(settings, "cpu", tmp_path)
    records = {n: module.run_part(n, ctx, remaining=60) for n in module.PARTS}
    assert records["p1_engine"]["status"] == "error" and "ValueError: no such backend" in records["p1_engine"]["error"]
    assert records["knobs"]["status"] == "timeout" and records["knobs"]["seconds"] < 2
    assert records["knobs"]["partial_figures"] == {"knobs": {"plain": {"seconds_per_image": 1.0}}}  # kept
    assert records["p3_injection"]["status"] == "ok" and records["p3_injection"]["goal"]["met"] is True
    assert module.run_part("p3_injection", ctx, remaining=1)["status"] == "skipped"  # its budget no longer fits
    report = {"mode": "gpu", "date": "d", "machine": module.machine(), "max_seconds": 480, "budget_total_s": 20,
              "total_seconds": 3.0, "parts": records}
    md = module.markdown(report)
    assert "no such backend" in md and "| p3_injection | ok |" in md and "| yes |" in md
