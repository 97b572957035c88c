"""Denoising windows: parsing and its errors, the steps a window holds, planning (keys, rows, `none`), and the
engine's per-step switch through the plug-in hook `at_step`."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import pytest
from conftest import on_tiny

from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.errors import ConfigError
from styleprobe.methods import base
from styleprobe.models.layers import LayerMap
from styleprobe.run.engine import Engine, batch_order
from styleprobe.run.plan import build_plan
from styleprobe.run.windows import FULL, Window, check_steps, expand_windows

MODEL = {"resolution": 64, "steps": 10, "guidance": 5.0}


def _plan(model, references, method="ip_adapter", patterns=("all",), windows=("full",), body=None):
    entries = base.parse_entries({method: body or {}}, patterns=list(patterns), windows=list(windows), presets={},
                                 sampler={}, model=MODEL, layer_map=lambda site: LayerMap.from_unet(model.pipe.unet, site))
    return build_plan(model=model.spec, dtype="float32", entries=entries, references=references[:1],
                      prompts=[PromptSpec("a cat", "a cat")], seeds=[0])


def test_generated_windows_and_the_steps_they_hold():
    one_hot = expand_windows(["one_hot:window:5"])
    assert [w.name for w in one_hot] == ["0.00-0.20", "0.20-0.40", "0.40-0.60", "0.60-0.80", "0.80-1.00"]
    assert [list(w.steps(10)) for w in one_hot] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # a partition
    assert [w.end for w in expand_windows(["from_start:4"])] == [0.25, 0.5, 0.75, 1.0]
    assert [w.start for w in expand_windows(["to_end:4"])] == [0.0, 0.25, 0.5, 0.75]
    assert expand_windows(["full", [0, 1], "from_start:1"]) == (FULL,)  # one full window, however written
    assert list(Window(0.0, 0.3).steps(10)) == [0, 1, 2] and list(Window(0.0, 0.3).steps(30)) == list(range(9))
    assert Window(0.0, 0.3).columns(10) == {"window": "0.00-0.30", "window_start": 0.0, "window_end": 0.3,
                                            "window_steps": "0-2"}
    assert FULL.full and not Window(0.0, 0.99).full


@pytest.mark.parametrize("spec, fragment", [
    ([1.2, 0.3], r"window \[1.2, 0.3\] lies outside \[0, 1\]"),
    ([-0.1, 0.3], "lies outside"),
    ([0.5, 0.5], r"empty or reversed; give start < end, e.g. \[0.5, 1\]"),
    ([0.6, 0.2], r"empty or reversed; give start < end, e.g. \[0.2, 0.6\]"),
    ("one_hot:window:0", "asks for 0 windows; give K >= 1, e.g. one_hot:window:5"),
    ("from_start:-2", "asks for -2 windows"),
    ("halfway", "unknown window 'halfway'; give full, a pair"),
    ([0.1, 0.2, 0.3], "neither full, a pair"),
])
def test_bad_windows_get_one_line_errors_naming_the_fix(spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        expand_windows([spec])
    with pytest.raises(ConfigError, match="empty list"):
        expand_windows([])


def test_a_window_without_a_step_is_refused_at_the_sampler_step_count():
    check_steps([Window(0.0, 0.2)], 10, "w")
    with pytest.raises(ConfigError, match=r"holds no step of the sampler's 10 .* or raise sampler.steps"):
        check_steps([Window(0.31, 0.39)], 10, "injection.windows")


def test_the_full_window_keeps_the_keys_made_before_windows(tiny_model, references):
    before = _plan(tiny_model, references, patterns=["all", "style"])
    windowed = _plan(tiny_model, references, patterns=["all", "style"], windows=["full", [0.0, 0.3]])
    assert [it.key for it in windowed if it.window.full] == [it.key for it in before]
    partial = [it for it in windowed if not it.window.full]
    assert len(partial) == 2 and not {it.key for it in partial} & {it.key for it in before}
    assert partial[0].row["window"] == "0.00-0.30" and partial[0].row["window_steps"] == "0-2"
    assert before[0].row["window"] == "0.00-1.00" and before[0].row["window_steps"] == "0-9"


def test_none_is_one_image_whatever_the_window(tiny_model, references):
    items = _plan(tiny_model, references, patterns=["none", "all"], windows=["one_hot:window:5"])
    assert sorted(it.pattern.name for it in items) == ["all"] * 5 + ["none"]
    (none,) = [it for it in items if it.pattern.name == "none"]
    assert none.window == FULL and none.key == _plan(tiny_model, references, patterns=["none"])[0].key


def test_a_method_entry_may_have_its_own_windows(tiny_model, references):
    items = _plan(tiny_model, references, windows=["full"], body={"windows": ["from_start:2"]})
    assert [it.row["window"] for it in items] == ["0.00-0.50", "0.00-1.00"]
    with pytest.raises(ConfigError, match=r"method.ip_adapter.windows: window \[0.3, 0.1\] is empty or reversed"):
        _plan(tiny_model, references, body={"windows": [[0.3, 0.1]]})


@dataclass(frozen=True)
class _Knobs:
    strength: float = 1.0


class _EveryStep(base.Method):
    """A method that acts on every step (no `window_support`)."""

    name: ClassVar[str] = "every_step"
    pattern_site: ClassVar[str] = "attn2"
    Knobs: ClassVar[type] = _Knobs

    def activate(self, model):
        pass

    def deactivate(self, model):
        pass

    def run_batch(self, engine, items):
        return []


def test_a_method_that_cannot_act_in_a_window_says_so_at_planning(tiny_model, references, monkeypatch):
    base.registry()
    monkeypatch.setitem(base.REGISTRY, _EveryStep.name, _EveryStep)
    assert len(_plan(tiny_model, references, method="every_step")) == 1  # the full window is fine
    with pytest.raises(ConfigError, match=r"method every_step acts on every step and cannot act in a window "
                                          r"\(0.00-0.50\); set method.every_step.windows=\[full\]"):
        _plan(tiny_model, references, method="every_step", windows=["from_start:2"])


def test_bad_windows_fail_before_any_model_loads(tmp_path):
    from conftest import cli_imports

    proc, imported = cli_imports(tmp_path, *on_tiny(["injection.windows=[[0.4,0.2]]", f"results_root={tmp_path}"]))
    assert proc.returncode != 0 and "injection.windows: window [0.4, 0.2] is empty or reversed" in proc.stderr
    assert "'torch'" not in imported and "'diffusers'" not in imported


def test_batches_of_a_per_batch_method_hold_one_window(tiny_model, references):
    items = _plan(tiny_model, references, patterns=["all", "style"], windows=["full", [0.0, 0.5]])
    assert len(batch_order(items)) == 1  # IP-Adapter: windows share a call
    per_batch = [SimpleNamespace(**{**vars_of(it), "method": SimpleNamespace(
        window_support="per_batch", batch_key=lambda it: ())}) for it in items]
    groups = batch_order(per_batch)
    assert len(groups) == 2 and all(len({it.window for it in g}) == 1 for g in groups)


def vars_of(item):
    return {f: getattr(item, f) for f in ("key", "entry", "sampler", "reference", "prompt", "seed", "window", "pattern")}


class _Recorder:
    """Records the `on` masks the engine hands the method, step by step, during a fake pipeline call."""

    name = "recorder"

    def __init__(self):
        self.calls: list[tuple[int, list[bool]]] = []
        self.step = 0

    def at_step(self, engine, items, on):
        self.calls.append((self.step, list(on)))


def test_the_engine_switches_windows_before_the_first_step_and_as_they_change():
    n = 5
    method = _Recorder()
    items = [SimpleNamespace(method=method, window=w) for w in (FULL, Window(0.0, 0.4), Window(0.6, 1.0))]
    engine = Engine.__new__(Engine)
    engine._windowed = items
    seen = []
    kwargs = engine._switching_windows(SimpleNamespace(steps=n), {"callback_on_step_end": lambda *a: seen.append(a[1]) or {}})
    callback, pipe = kwargs["callback_on_step_end"], SimpleNamespace(num_timesteps=n, scheduler=None)
    for step in range(n):
        method.step = step + 1
        callback(pipe, step, None, {})
    # before step 0; then before step 2 (the second leaves) and step 3 (the third enters); nothing else changes
    assert method.calls == [(0, [True, True, False]), (2, [True, False, False]), (3, [True, False, True])]
    assert seen == list(range(n))  # the method's own callback still runs after every step
    with pytest.raises(Exception, match="runs 9 UNet steps"):
        callback(SimpleNamespace(num_timesteps=9, scheduler=None), 0, None, {})
    engine._windowed = None
    assert engine._switching_windows(SimpleNamespace(steps=n), {"x": 1}) == {"x": 1}  # full windows: untouched
