"""Shared fixtures: one tiny model per test session, built into a private cache."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before styleprobe is imported anywhere: a private cache and no Hub access, so tests never touch the network
# or a developer's own cache.
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="styleprobe-test-cache-"))
atexit.register(shutil.rmtree, _SESSION_CACHE, True)
os.environ["STYLEPROBE_CACHE"] = str(_SESSION_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _SESSION_CACHE


@pytest.fixture(scope="session")
def tiny_spec():
    from styleprobe.models.presets import AdapterSpec, ModelSpec

    return ModelSpec(
        name="tiny",
        family="sdxl",
        base="tiny:stable-diffusion-xl-base",
        adapter=AdapterSpec(source="tiny:IP-Adapter", subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors"),
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    """The tiny pipeline (shared: tests must not mutate it), loaded once per session."""
    from styleprobe.models.loading import load, quiet_libraries

    quiet_libraries()
    return load(tiny_spec, "cpu")


@pytest.fixture
def tiny_ip(tiny_model):
    """The tiny pipeline set up for IP-Adapter: its adapter loaded and styleprobe's attn2 processors in place."""
    from styleprobe.methods.base import method
    from styleprobe.run.engine import Engine

    ip = method("ip_adapter")
    Engine(tiny_model).use(ip, _sampler())
    return tiny_model


def _sampler():
    from styleprobe.run.sampler import Sampler

    return Sampler(steps=2, guidance=5.0, height=64, width=64)


@pytest.fixture(scope="session")
def references():
    from styleprobe.data.style_sets import load_style_set

    return load_style_set("builtin:shapes")


@pytest.fixture
def keep_tiny_loaded(tiny_model):
    """For tests that load another model: afterwards the session's tiny model is the loaded one again."""
    from styleprobe.models import loading

    saved = dict(loading._LOADED)
    yield
    loading._LOADED.clear()
    loading._LOADED.update(saved)


@pytest.fixture
def make_items():
    """Work items for a model without a config tree: make_items(model, method, references, patterns=[...], **knobs).

    Knobs given as lists are swept; `prompts` are (prompt, subject) texts, `sampler` a Sampler (2 steps by default),
    `windows` as `injection.windows` takes them.
    """
    from styleprobe.data.prompt_sets import PromptSpec
    from styleprobe.methods.base import parse_entries
    from styleprobe.models.layers import LayerMap
    from styleprobe.run.plan import build_plan

    def make(model, method, references, patterns=("all",), prompts=("a teapot",), seeds=(0,), sampler=None,
             windows=("full",), **knobs):
        sampler = sampler or _sampler()
        fields = {f: getattr(sampler, f) for f in ("steps", "guidance", "height", "width", "scheduler", "negative_prompt")}
        fields["scheduler_options"] = dict(sampler.scheduler_options)
        entries = parse_entries(
            {method: knobs}, patterns=list(patterns), windows=list(windows), presets={}, sampler=fields, model={},
            layer_map=lambda site: LayerMap.from_unet(model.pipe.unet, site),
        )
        dtype = str(model.dtype).removeprefix("torch.")
        return build_plan(model=model.spec, dtype=dtype, entries=entries, references=references,
                          prompts=[PromptSpec(p, p) for p in prompts], seeds=list(seeds))

    return make


def on_tiny(overrides) -> list[str]:
    """Config overrides for the fast machinery tests: the random tiny model unless a test names a model (the
    default model is the trained toy world, which tests of the toy itself use)."""
    overrides = list(overrides)
    if overrides and overrides[0] in ("score", "analyze", "status", "compact"):  # subcommands read a results folder's own config
        return overrides
    return overrides if any(str(o).startswith("model=") for o in overrides) else [*overrides, "model=tiny"]


#: The libraries that take seconds to import: config checks, planning and resume checks must not need them.
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "open_clip")


def cli_imports(cwd: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """The CLI in a fresh interpreter: its process and the `IMPORTED [...]` line naming the heavy libraries it had
    imported when it exited."""
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))\n"
        f"sys.argv = ['styleprobe', *{list(args)!r}]\n"
        "from styleprobe.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env={**os.environ, **env},
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    return proc, lines[-1] if lines else ""


def batch_outputs(model, items, store, output_type: str = "latent") -> torch.Tensor:
    """The outputs of one engine call for `items` (after the method's preparation into `store`), stacked in order:
    final latents by default, so a method can be compared with golden latents of its original code."""
    from styleprobe.run.engine import Engine

    engine = Engine(model, batch_size=len(items), output_type=output_type)
    engine.use(items[0].method, items[0].sampler)
    items[0].method.prepare(engine, items, store)
    return torch.stack([torch.as_tensor(o) for o in engine.run_batch(items)])
