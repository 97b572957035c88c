"""What a new user types wrong, tried as they would: misspelt keys, a bare seed count, their own style set beside the
preset's, their references in the toy world, and `--help`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_imports
from hydra import compose, initialize_config_dir

from styleprobe.config import CONFIG_DIR, seeds
from styleprobe.errors import ConfigError
from styleprobe.models import loading
from styleprobe.overrides import check_keys


def _results_dir(tmp_path: Path, *overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return Path(compose(config_name="config", overrides=[f"results_root={tmp_path}", *overrides]).results_dir)


# misspelt and added keys -----------------------------------------------------------------------------------------
def test_a_misspelt_key_names_the_nearest_valid_one():
    assert check_keys(["seed=[0,1]"], "config") == "unknown key 'seed'; did you mean seeds=[0,1]?"
    assert check_keys(["seed=1"], "config") == "unknown key 'seed'; did you mean seeds=[1]?"  # in the form seeds takes
    assert check_keys(["model=tiny", "engine.batchsize=4"], "config") == (
        "unknown key 'engine.batchsize'; did you mean engine.batch_size=4?")
    assert check_keys(["engin.batch_size=4"], "config") == "unknown key 'engin.batch_size'; did you mean engine.batch_size=4?"
    assert check_keys(["~method.b_lor", "experiment=benchmark"], "config") == "unknown key 'method.b_lor'; did you mean ~method.b_lora?"
    assert check_keys(["results_dri=x"], "score") == "unknown key 'results_dri'; did you mean results_dir=x?"
    nothing_near = check_keys(["colour=red"], "config")
    assert nothing_near.startswith("unknown key 'colour'; valid keys at the top level: shard, progress, name, seeds,")


def test_plus_is_offered_only_where_entries_are_added():
    assert check_keys(["model=sdxl", "model.presets.style=[mid_block]"], "config") == (
        "unknown key 'model.presets.style'; model.presets has no entries yet: to add one, write +model.presets.style=[mid_block]")
    entry = check_keys(["method.ip_quarter={type: ip_adapter}"], "config")
    assert entry.endswith("(or, to add a new entry to method, write +method.ip_quarter={type: ip_adapter})")
    assert "+" not in check_keys(["engine.batchsize=4"], "config")
    assert check_keys(["sampler.scheduler_options.timestep_spacing=trailing"], "config") == (
        "sampler.scheduler_options is null, so sampler.scheduler_options.timestep_spacing cannot be set on its own; "
        "give the whole mapping, e.g. sampler.scheduler_options={timestep_spacing: trailing}")


def test_an_added_top_level_key_is_refused():
    assert check_keys(["+seed=[0,1]"], "config") == (
        "unknown key 'seed'; did you mean seeds=[0,1]? (a new top-level key is read by no part of styleprobe)")
    assert check_keys(["++seed=[0,1]"], "config").startswith("unknown key 'seed'; did you mean seeds=[0,1]?")
    assert check_keys(["+colour.hue=red"], "config").startswith("unknown key 'colour'; valid keys at the top level:")


def test_valid_overrides_pass_the_key_check():
    assert check_keys([
        "-m", "model=tiny,toy", "seeds=[0,1]", "engine.batch_size=4", "shard.index=range(4)", "shard.count=4",
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=benchmark", "method.instantstyle.scale=0.5",
        "~method.b_lora", "+method.ip_quarter={type: ip_adapter, patterns: [all], scale: 0.25}", "method.ip_quarter.scale=0.5",
        "+model.presets.mine=[mid_block]", "metrics=[default,style_clip_vit_h]", "data.style_set=/data/x", "--cfg", "job",
    ], "config") is None
    assert check_keys(["results_dir=x", "analysis.verdict.style_fraction=0.6"], "analyze") is None
    assert check_keys(["--help", "seed=1"], "config") is None  # help is Hydra's


@pytest.mark.parametrize("args, message", [
    (["seed=[0,1]"], "styleprobe: error: unknown key 'seed'; did you mean seeds=[0,1]?"),
    (["+seed=[0,1]"], "styleprobe: error: unknown key 'seed'; did you mean seeds=[0,1]? (a new top-level key is read by "
                      "no part of styleprobe)"),
    (["engine.batchsize=4"], "styleprobe: error: unknown key 'engine.batchsize'; did you mean engine.batch_size=4?"),
    (["seeds=3"], "styleprobe: error: seeds=3; give a list, e.g. seeds=[0,1,2] for three seeds or seeds=[3] for seed 3 alone"),
])
def test_cli_bad_keys_and_a_bare_seed_are_one_line_before_any_model_library(tmp_path, args, message):
    proc, imported = cli_imports(tmp_path, "model=tiny", *args, STYLEPROBE_RESULTS=str(tmp_path / "results"))
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("IMPORTED")]
    assert proc.returncode == 2 and lines == [message], proc.stderr[-2000:]
    assert imported == "IMPORTED []"
    assert not (tmp_path / "results").exists()


# seeds -------------------------------------------------------------------------------------------------------------
def test_seeds_is_a_list_and_a_bare_number_is_refused():
    with pytest.raises(ConfigError, match=r"^seeds=3; give a list, e.g. seeds=\[0,1,2\] for three seeds or seeds=\[3\]"):
        seeds(3)
    with pytest.raises(ConfigError, match=r"^seeds=abc; give a list"):
        seeds("abc")
    assert seeds([3]) == [3] and seeds([0, 1, 2]) == [0, 1, 2]


# results folders of other sets --------------------------------------------------------------------------------------
def test_the_presets_folders_are_unchanged(tmp_path):
    assert _results_dir(tmp_path) == tmp_path / "toy" / "layer_probe"
    assert _results_dir(tmp_path, "experiment=benchmark") == tmp_path / "toy" / "benchmark"
    for experiment in ("layer_probe", "layer_probe_layers", "leave_one_out", "subtraction", "benchmark", "custom"):
        for model in ("sdxl", "tiny", "sd15"):
            name = "custom" if experiment == "custom" else experiment
            assert _results_dir(tmp_path, f"model={model}", f"experiment={experiment}") == tmp_path / model / name
    assert _results_dir(tmp_path, "model=tiny", "data=small") == tmp_path / "tiny" / "layer_probe"  # a part of the preset's
    assert _results_dir(tmp_path, "model=sdxl", "data=builtin") == tmp_path / "sdxl" / "layer_probe"


def test_another_style_or_prompt_set_gets_its_own_folder_unless_results_dir_is_given(tmp_path):
    mine = tmp_path / "my_styles"
    assert _results_dir(tmp_path, f"data.style_set={mine}") == tmp_path / "toy" / "layer_probe-my_styles"
    assert _results_dir(tmp_path, f"data.style_set={mine / 'manifest.csv'}") == tmp_path / "toy" / "layer_probe-my_styles"
    assert _results_dir(tmp_path, "model=sdxl", f"data.style_set={mine}", "data.prompts=/data/prompts.txt") == (
        tmp_path / "sdxl" / "layer_probe-my_styles-prompts")
    assert _results_dir(tmp_path, "data=builtin") == tmp_path / "toy" / "layer_probe-shapes-objects"  # not the toy's sets
    inline = _results_dir(tmp_path, "data.prompts=[a cat,a dog]")
    assert inline.name.startswith("layer_probe-prompts_") and inline != _results_dir(tmp_path, "data.prompts=[a cat]")
    joined = tmp_path / "toy" / "layer_probe"
    assert _results_dir(tmp_path, f"data.style_set={mine}", f"results_dir={joined}") == joined


# the toy world with other references ----------------------------------------------------------------------------------
def _style_set(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "stripes.png")
    (folder / "manifest.csv").write_text("image,style,content\nstripes.png,red stripes,a square\n")
    return folder


def test_the_toy_with_your_references_warns_once_before_loading(tmp_path, monkeypatch, caplog):
    from styleprobe.run.sweep import run

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(loading, "load", stop)
    refs = _style_set(tmp_path / "stripes")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"results_root={tmp_path / 'results'}", "metrics=[]", f"data.style_set={refs}",
                                                       "data.prompts=[a star]", "injection.patterns=[all]", "experiment=custom"])
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="styleprobe"), pytest.raises(Stop):
            run(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "toy world" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"model=toy with the style set {refs}: the toy world knows only its eight styles (hatched ink,")
    assert "the findings are about the toy's eight styles, not about these references" in warnings[0]


def test_the_toys_own_references_and_other_models_do_not_warn(caplog, tmp_path):
    from styleprobe.data.style_sets import warn_if_unlike_toy

    with caplog.at_level(logging.WARNING, logger="styleprobe"):
        warn_if_unlike_toy("builtin:toy", "toy:stable-diffusion-xl-base")
        warn_if_unlike_toy(str(tmp_path), "tiny:stable-diffusion-xl-base")
        warn_if_unlike_toy(str(tmp_path), "stabilityai/stable-diffusion-xl-base-1.0")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="styleprobe"):
        warn_if_unlike_toy("builtin:shapes", "toy:stable-diffusion-xl-base")
    assert len(caplog.records) == 1


# --help ------------------------------------------------------------------------------------------------------------
def test_help_says_what_styleprobe_is_its_commands_groups_and_examples(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "styleprobe.cli", "--help"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("styleprobe: find, by measurement, where style lives")
    assert len(lines) < 50
    for command in ("score", "analyze", "status", "compact"):
        assert any(line.strip().startswith(command + " ") for line in lines), command
    assert "model: sd15, sdxl, sdxl_vit_h, tiny, tiny_vit_h, toy" in lines
    assert any(line.startswith("experiment: benchmark, custom, layer_masks, layer_probe") for line in lines)
    assert "styleprobe --cfg job" in proc.stdout and "  styleprobe experiment=subtraction seeds=[0,1,2]" in lines
    assert "results_root:" not in proc.stdout and "Powered by Hydra" not in proc.stdout  # no config dump, no generic text
