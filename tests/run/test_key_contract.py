"""Keys are a contract: IP-Adapter work planned by earlier versions keeps its keys, so old results folders resume.

The recorded plans and the results folder under tests/fixtures/ip_adapter_b5ca8c3/ were written by styleprobe before
methods became plug-ins (see its README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir
from PIL import Image

from styleprobe.cli import MOVED
from styleprobe.config import CONFIG_DIR
from styleprobe.models import loading
from styleprobe.run.store import Store
from styleprobe.run.sweep import prepare, run

RECORD = Path(__file__).parents[1] / "fixtures" / "ip_adapter_b5ca8c3"
PLANS = json.loads((RECORD / "plans.json").read_text())["configs"]
SDXL_UNET = json.loads((Path(__file__).parents[1] / "fixtures" / "sdxl_unet_config.json").read_text())

#: The command that wrote results/ (see its runs/*/config.yaml).
RUN_OVERRIDES = ["experiment=custom", "data=small", "data.prompts=[a red bicycle]", "injection.patterns=[none,style]",
                 "injection.subtraction=[0.0,0.5]", "analyze=false"]


def _translate(overrides: list[str]) -> list[str]:
    out = []
    for o in overrides:
        path, sep, value = o.partition("=")
        out.append(MOVED.get(path, path) + sep + value)
    return out


def _cfg(results_root: Path, overrides: list[str], metrics: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        extra = [] if metrics else ["metrics=[]"]
        return compose(config_name="config", overrides=on_tiny([f"results_root={results_root}", *extra, *_translate(overrides)]))


@pytest.mark.parametrize("name", sorted(PLANS))
def test_ip_adapter_keys_and_rows_are_unchanged(name, tmp_path, monkeypatch):
    recorded = PLANS[name]
    real = loading.load_unet_config
    monkeypatch.setattr(loading, "load_unet_config", lambda spec: SDXL_UNET if spec.name.startswith("sdxl") else real(spec))
    items = prepare(_cfg(tmp_path, recorded["overrides"])).items
    rows = [dict(it.row) for it in items]
    assert sorted({r["reference_digest"] for r in rows}) == recorded["digests"], "the built-in references changed"
    assert sorted(r["key"] for r in rows) == recorded["keys"]
    by_key = {r["key"]: r for r in rows}
    for old in recorded["rows"]:
        new = by_key[old["key"]]
        assert {c: new.get(c) for c in old} == old  # every recorded column, same value (new columns may be added)


def test_results_folder_from_an_earlier_version_resumes_with_nothing_to_do(tmp_path, tiny_model):
    folder = Path(_cfg(tmp_path, RUN_OVERRIDES).results_dir)  # its own prompts: tiny/custom-prompts_<digest> by default
    shutil.copytree(RECORD / "results", folder)
    result = run(_cfg(tmp_path, RUN_OVERRIDES, metrics=True))
    assert result.results_dir == folder
    assert (result.planned, result.done_before, result.generated) == (8, 8, 0)
    assert sum(result.scored.values()) == 0  # every default metric's column was already filled
    assert len(Store(folder).table()) == 8


def test_earlier_images_are_made_again_the_same(tmp_path, tiny_model):
    """The same items in a fresh folder: the same images as the recorded ones, up to 8-bit rounding."""
    fresh = run(_cfg(tmp_path, RUN_OVERRIDES))
    old, new = Store(RECORD / "results").table().set_index("key"), Store(fresh.results_dir).table().set_index("key")
    assert sorted(old.index) == sorted(new.index)
    for key in old.index:
        a = np.asarray(Image.open(RECORD / "results" / old.loc[key, "image_path"]), dtype=np.int16)
        b = np.asarray(Image.open(fresh.results_dir / new.loc[key, "image_path"]), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, key
