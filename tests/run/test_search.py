"""The layer-set search: a planted answer found exactly, resumed without remaking an image, honest unit splits, one
name per set, bad input refused before any model loads, and the Optuna sweeper's trials reaching the Pareto figure."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from styleprobe.config import CONFIG_DIR
from styleprobe.data.prompt_sets import PromptSpec
from styleprobe.data.style_sets import load_style_set
from styleprobe.errors import ConfigError
from styleprobe.models import loading
from styleprobe.models.layers import LayerMap, expand_patterns, set_pattern
from styleprobe.run.search import SearchSettings, run, split_units

PLANTED = ("down_blocks.1.attentions.0", "up_blocks.1.attentions.1")
TOY_PROMPTS = ["a circle", "a square", "a star", "a heart"]


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"results_root={tmp_path}", "experiment=layer_search", *overrides])


def _toy_map() -> LayerMap:
    from styleprobe.models.sources import resolve_source

    config = json.loads((Path(resolve_source("toy:stable-diffusion-xl-base")) / "unet" / "config.json").read_text())
    return LayerMap.from_config(config, "attn2")


def test_a_set_has_one_name_however_it_is_written():
    lm = _toy_map()
    assert set_pattern(lm, lm.mask([])).name == "none" and set_pattern(lm, lm.mask(None)).name == "all"
    assert set_pattern(lm, lm.mask(["up_blocks.0.attentions.1", "down_blocks.2.attentions.1"])).name == "style_layout"
    one = set_pattern(lm, lm.mask(["up_blocks.0.attentions.1"]))
    assert (one.name, one.sweep, one.target) == ("one_hot:up_blocks.0.attentions.1", "one_hot_module", "up_blocks.0.attentions.1")
    # a block is its modules; the order a set is written in does not matter
    block = set_pattern(lm, lm.mask(["down_blocks.1"]))
    assert block.name == "set:down_blocks.1.attentions.0+down_blocks.1.attentions.1" and block.sweep == "layer_set"
    spelled = expand_patterns(["set:down_blocks.1.attentions.1+down_blocks.1.attentions.0"], lm)[0]
    assert spelled == block
    # the one-hot probe's patterns carry the same names, so a search reuses a layer probe's images
    assert {p.name for p in lm.sweep("one_hot:module")} == {set_pattern(lm, p.scales).name for p in lm.sweep("one_hot:module")}
    with pytest.raises(ConfigError, match="names no layers"):
        expand_patterns(["set:"], lm)


def test_units_split_by_a_hash_that_keeps_each_prompt_on_its_side():
    refs = load_style_set("builtin:shapes")
    prompts = [PromptSpec(f"prompt {i}", f"s{i}") for i in range(8)]
    split = split_units(SearchSettings(), refs, prompts, [0])
    assert len(split.select) == len(split.confirm) == 4 and not set(split.select) & set(split.confirm)
    more = split_units(SearchSettings(), refs, [*prompts, *(PromptSpec(f"prompt {i}", "") for i in range(8, 16))], [0])
    assert set(split.confirm) - set(more.confirm) == set() or len(set(split.confirm) & set(more.confirm)) >= 2
    by_ref = split_units(SearchSettings(holdout="references"), refs, prompts, [0])
    assert set(by_ref.select) | set(by_ref.confirm) == {r.digest for r in refs}
    fresh = split_units(SearchSettings(holdout="seeds"), refs, prompts, [0, 1])
    assert fresh.seeds == (0, 1) and fresh.confirm_seeds == (2, 3)
    with pytest.raises(ConfigError, match="repeat the selection seeds"):
        split_units(SearchSettings(holdout="seeds", confirm_seeds=(1, 5)), refs, prompts, [0, 1])
    with pytest.raises(ConfigError, match="1 to select on and 0 to confirm on|0 to select on and 1 to confirm on"):
        split_units(SearchSettings(), refs, prompts[:1], [0])


@pytest.mark.parametrize(("override", "message"), [
    ("search.space=heads", "search.space='heads'; choose one of modules, blocks, layers"),
    ("search.max_size=0", "search.max_size=0; give a whole number >= 1"),
    ("search.holdout_fraction=1.0", "search.holdout_fraction=1.0"),
    ("data.prompts=[a teapot]", "splits 1 prompts into"),
    ("search.direction=sideways", "search.direction='sideways'"),
])
def test_bad_search_input_fails_before_any_model_loads(tmp_path, override, message):
    loads = loading.LOAD_COUNT["n"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        run(_cfg(tmp_path, *on_tiny([override])))
    assert loading.LOAD_COUNT["n"] == loads and not (tmp_path / "tiny").exists()


def test_a_multirun_checks_the_search_once_before_launching(tmp_path, capsys):
    from styleprobe.run.callbacks import CheckBeforeLaunch

    loads = loading.LOAD_COUNT["n"]
    with pytest.raises(SystemExit) as stop:
        CheckBeforeLaunch().on_multirun_start(_cfg(tmp_path, *on_tiny(["search=masks", "search.holdout=seeds",
                                                                         "search.confirm_seeds=[0]"])))
    assert stop.value.code == 2 and loading.LOAD_COUNT["n"] == loads
    assert "repeat the selection seeds [0]" in capsys.readouterr().err


def test_a_search_error_is_one_line_from_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "styleprobe.cli", "experiment=layer_search", "model=tiny",
                           f"results_root={tmp_path}", "search.space=heads"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["styleprobe: error: search.space='heads'; choose one of modules, blocks, layers"]


def _planted_world(tmp_path: Path) -> tuple[Path, Path]:
    """The toy world's adapter with every module's image branch zeroed but PLANTED's, and four of its references."""
    from styleprobe.models.sources import resolve_source

    adapter = tmp_path / "adapter"
    shutil.copytree(resolve_source("toy:IP-Adapter"), adapter)
    config = json.loads((Path(resolve_source("toy:stable-diffusion-xl-base")) / "unet" / "config.json").read_text())
    names = list(loading.build_unet_structure(config).attn_processors)
    checkpoint = adapter / "sdxl_models" / "ip-adapter_sdxl.safetensors"
    state = load_file(str(checkpoint))
    zeroed = 0
    for key in [k for k in state if k.startswith("ip_adapter.")]:
        if not names[int(key.split(".")[1])].startswith(tuple(f"{m}." for m in PLANTED)):
            state[key] = state[key] * 0  # to_k_ip / to_v_ip of zero: that module's image branch adds exactly nothing
            zeroed += 1
    kept = [n for n in names if n.endswith("attn2.processor") and n.startswith(tuple(f"{m}." for m in PLANTED))]
    assert kept and zeroed == 2 * (sum(1 for n in names if n.endswith("attn2.processor")) - len(kept))
    save_file(state, str(checkpoint))
    styles = tmp_path / "styles"
    styles.mkdir()
    with (styles / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "style", "content"])
        for ref in load_style_set("builtin:toy")[:4]:
            shutil.copy(ref.image, styles / ref.image.name)
            writer.writerow([ref.image.name, ref.style, ref.content])
    return adapter, styles


@pytest.mark.slow
def test_the_search_finds_exactly_the_two_planted_modules_and_resumes_without_remaking_an_image(tmp_path):
    adapter, styles = _planted_world(tmp_path)
    common = [f"model.adapter.source={adapter}", f"data.style_set={styles}", f"data.prompts=[{','.join(TOY_PROMPTS)}]",
              "metrics=[style_csd,leak_clip,text_clip]", "analysis.verdict.style_metric=style_csd",
              "analysis.verdict.leak_metric=leak_clip", "analysis.verdict.text_metric=text_clip",
              # a single carrying module may well keep 80% of all's style; only the exact pair keeps all of it
              "analysis.verdict.style_fraction=0.999", "analysis.bootstrap.n_boot=500", "analyze=false"]
    first = run(_cfg(tmp_path, *common, "search.max_size=1"))
    assert first.record["stop"] == "max_size" and len(first.record["rounds"]) == 1
    assert first.record["rounds"][0]["chosen"] in {f"one_hot:{m}" for m in PLANTED}
    cells = 4 * 2  # four references x the two selection prompts
    killed_after_round_one = first.generated
    second = run(_cfg(tmp_path, *common, "search.max_size=3"))
    record = second.record
    assert record["stop"] == "reached" and record["answer"] == list(PLANTED) and len(record["rounds"]) == 2
    def decided(rounds):  # what each round measured and chose (not how many images that run happened to make)
        return [{k: v for k, v in r.items() if k != "made"} for r in rounds]

    assert decided(record["rounds"][:1]) == decided(first.record["rounds"])  # replayed from the stored scores
    assert record["rounds"][0]["made"] == 0
    chosen = record["selection"]["answer"]
    assert chosen["style_kept"] == chosen["style_kept_low"] == 1.0  # the planted pair is `all`, image for image
    # the resumed search made only round 2's ten new sets on the selection units and the answer on the held-out ones
    assert second.generated == 10 * cells + cells
    assert killed_after_round_one == 13 * cells + cells + 5 * cells  # round 1 + the style block's twin + confirmation
    confirmed = {s["name"]: s for s in record["confirmation"]["sets"]}
    assert set(confirmed) == {f"set:{'+'.join(PLANTED)}", "style_layout", "one_hot:up_blocks.0.attentions.1"}
    assert confirmed[f"set:{'+'.join(PLANTED)}"]["leak"] == 0.0  # the same images as all's on the held-out units too
    again = run(_cfg(tmp_path, *common, "search.max_size=3"))
    assert again.generated == 0 and decided(again.record["rounds"]) == decided(record["rounds"])
    from styleprobe.run.status import status

    notes = status(second.results_dir).notes
    assert any("2 round(s)" in n and "finished (reached" in n for n in notes)
    from styleprobe.analysis.report import analyze
    from styleprobe.analysis.settings import default_settings

    report = analyze(second.results_dir, default_settings(**{"verdict.style_metric": "style_csd", "verdict.leak_metric": "leak_clip",
                                                             "verdict.text_metric": "text_clip", "verdict.style_fraction": 0.999,
                                                             "bootstrap.n_boot": 200}))
    text = report.path.read_text()
    assert "The smallest set found that keeps >= 99.9% of the style is {`down_blocks.1.attentions.0`, `up_blocks.1.attentions.1`} (2 modules)" in text
    names = [p.name for p in report.figures]  # two searches of the same units (max_size 1 and 3): numbered figures
    assert sum(n.startswith("search_trajectory") and n.endswith(".png") for n in names) == 2
    assert sum(n.startswith("search_pareto") and n.endswith(".png") for n in names) == 1


@pytest.mark.slow
def test_optuna_trials_through_the_sweeper_reach_the_pareto_figure(tmp_path):
    env = {**os.environ, "STYLEPROBE_MULTIRUN_DIR": str(tmp_path / "multirun")}
    proc = subprocess.run(
        [sys.executable, "-m", "styleprobe.cli", "-m", "experiment=layer_masks", "model=tiny", f"results_root={tmp_path}",
         "hydra.sweeper.n_trials=3", "data.prompts=[a teapot,a red bicycle,a castle,a lighthouse]",
         "metrics=[style_csd,leak_clip,text_clip]", "analysis.bootstrap.n_boot=200"],
        capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = next((tmp_path / "tiny").iterdir())
    trials = [json.loads(p.read_text()) for p in (folder / "search" / "masks").glob("*.json")]
    assert 1 <= len(trials) <= 3 and all(t["kind"] == "masks" and set(t["objectives"]) == {"style", "leak"} for t in trials)
    assert "Number of Pareto solutions" in proc.stdout + proc.stderr
    report = (folder / "analysis" / "report.md").read_text()
    assert f"{len(trials)} masks measured" in report and (folder / "analysis" / "figures" / "search_pareto.png").is_file()
