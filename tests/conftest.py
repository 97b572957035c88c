"""Shared fixtures: one tiny model per test session, built into a private cache."""

from __future__ import annotations

import atexit
import os
import shutil
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
    from styleprobe.models import AdapterSpec, ModelSpec

    return ModelSpec(
        name="tiny",
        family="sdxl",
        base="tiny:stable-diffusion-xl-base",
        adapter=AdapterSpec(source="tiny:IP-Adapter", subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors"),
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    """The tiny pipeline with its adapter and styleprobe's processors (shared: tests must not mutate it)."""
    from styleprobe.cli import _quiet_libraries
    from styleprobe.models import load

    _quiet_libraries()
    return load(tiny_spec, "cpu")


@pytest.fixture(scope="session")
def references():
    from styleprobe.data import load_style_set

    return load_style_set("builtin:shapes")


@pytest.fixture
def keep_tiny_loaded(tiny_model):
    """For tests that load another model: afterwards the session's tiny model is the loaded one again."""
    from styleprobe import models

    saved = dict(models._LOADED)
    yield
    models._LOADED.clear()
    models._LOADED.update(saved)
