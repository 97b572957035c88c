"""Sweeps end to end: configs compose, runs resume, shards split, bad input fails early and writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_imports, on_tiny
from hydra import compose, initialize_config_dir
from PIL import Image

from styleprobe.config import CONFIG_DIR
from styleprobe.errors import ConfigError, ModelUnavailableError
from styleprobe.models import loading
from styleprobe.run.sampler import Sampler
from styleprobe.run.store import Store
from styleprobe.run.sweep import prepare, run

REQUIRED_COLUMNS = {
    "key", "image_path", "model", "method", "injection", "layers", "scale", "subtraction", "style", "content",
    "prompt", "seed", "steps", "guidance", "height", "width",
}


def _cfg(tmp_path: Path, *overrides: str):
    """The composed sweep config; unscored (metrics=[]) unless the test names metrics (test_scoring covers them)."""
    unscored = [] if any(o.startswith("metrics") for o in overrides) else ["metrics=[]"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={tmp_path}", *unscored, *overrides]))


def test_the_default_run_is_the_toy_worlds_layer_probe(tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"results_root={tmp_path}"])
    assert cfg.model.name == "toy" and cfg.name == "layer_probe" and cfg.data.style_set == "builtin:toy"


def test_experiments_compose(tmp_path):
    probe = _cfg(tmp_path)
    assert probe.name == "layer_probe" and probe.model.name == "tiny"
    assert list(probe.injection.patterns) == ["none", "all", "style_layout", "one_hot:module"]
    sub = _cfg(tmp_path, "experiment=subtraction")
    assert list(sub.injection.patterns) == ["none", "all", "style", "style_layout"]
    assert list(sub.method.ip_adapter.subtraction) == [0.0, 0.25, 0.5, 0.75, 1.0]
    sdxl = _cfg(tmp_path, "model=sdxl")
    resolved = Sampler.resolve(sdxl.sampler, {}, sdxl.model)  # null sampler settings: the model preset's
    assert (resolved.steps, resolved.guidance, resolved.height, resolved.scheduler) == (30, 5.0, 1024, "default")
    vit_h = _cfg(tmp_path, "model=sdxl_vit_h")
    assert vit_h.model.adapter.image_encoder_folder == "models/image_encoder"
    assert vit_h.model.content_text_encoder == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert _cfg(tmp_path, "model=sd15").model.family == "sd15"


def test_layer_probe_plan_covers_every_module(tmp_path):
    plan = prepare(_cfg(tmp_path, "data=small"))
    names = {it.pattern.name for it in plan.items}
    assert len(names) == 14  # 11 one-hot modules + all + none + style_layout (style is one_hot:up_blocks.0.attentions.1)
    assert len(plan.items) == 14 * 2 * 2  # x 2 references x 2 prompts x 1 seed
    assert len({it.key for it in plan.items}) == len(plan.items)


def test_keys_are_stable_and_sensitive(tmp_path):
    base = {it.row["injection"] + it.row["style"] + it.row["prompt"]: it.key for it in prepare(_cfg(tmp_path, "data=small")).items}
    again = {it.row["injection"] + it.row["style"] + it.row["prompt"]: it.key for it in prepare(_cfg(tmp_path, "data=small")).items}
    assert base == again
    for override in ("seeds=[1]", "sampler.steps=5", "sampler.guidance=3.0", "method.ip_adapter.scale=[0.5]", "sampler.negative_prompt=blurry"):
        changed = {it.row["injection"] + it.row["style"] + it.row["prompt"]: it.key for it in prepare(_cfg(tmp_path, "data=small", override)).items}
        assert set(changed.values()).isdisjoint(base.values()), override


def test_shards_partition_the_plan(tmp_path):
    full = {it.key for it in prepare(_cfg(tmp_path, "data=small")).items}
    parts = [{it.key for it in prepare(_cfg(tmp_path, "data=small", f"shard.index={i}", "shard.count=3")).items} for i in range(3)]
    assert set().union(*parts) == full
    assert sum(len(p) for p in parts) == len(full)
    assert all(parts)


def test_run_writes_images_and_table_then_resumes(tmp_path, tiny_model):
    cfg = _cfg(tmp_path, "data=small", "injection=style", "method.ip_adapter.subtraction=[0.0,0.5]", "seeds=[0,1]")
    loads = loading.LOAD_COUNT["n"]
    first = run(cfg)
    assert first.generated == 16 and first.done_before == 0  # 2 references x 2 prompts x 2 seeds x 2 strengths
    store = Store(first.results_dir)
    table = store.table()
    assert len(table) == 16 and REQUIRED_COLUMNS <= set(table.columns)
    assert set(table.subtraction) == {0.0, 0.5} and set(table.seed) == {0, 1}
    for rel in table.image_path:
        with Image.open(store.root / rel) as im:
            assert im.size == (64, 64)
    configs = list(store.runs.glob("*/config.yaml"))
    assert len(configs) == 1 and "subtraction:" in configs[0].read_text()
    files_before = sorted(p for p in store.root.rglob("*") if p.is_file() and "runs" not in p.parts)

    loads = loading.LOAD_COUNT["n"]  # (the first run may load it: a test before may have left another model loaded)
    second = run(cfg)
    assert second.generated == 0 and second.done_before == 16
    assert len(store.table()) == 16
    assert sorted(p for p in store.root.rglob("*") if p.is_file() and "runs" not in p.parts) == files_before
    assert loading.LOAD_COUNT["n"] == loads  # the loaded model was reused, never reloaded


def test_same_seed_and_config_give_the_same_image(tmp_path, tiny_model):
    a = run(_cfg(tmp_path / "a", "data=small", "injection=all"))
    b = run(_cfg(tmp_path / "b", "data=small", "injection=all", "engine.batch_size=1"))
    ta, tb = Store(a.results_dir).table().set_index("key"), Store(b.results_dir).table().set_index("key")
    assert sorted(ta.index) == sorted(tb.index)
    import numpy as np

    for key in ta.index:
        x = np.asarray(Image.open(a.results_dir / ta.loc[key, "image_path"]), dtype=np.int16)
        y = np.asarray(Image.open(b.results_dir / tb.loc[key, "image_path"]), dtype=np.int16)
        assert np.abs(x - y).max() <= 1  # batch of 8 vs batch of 1: 8-bit rounding of a ~1e-6 difference


def test_failure_mid_run_keeps_finished_batches_and_rerun_completes(tmp_path, tiny_model, monkeypatch):
    from styleprobe.run.engine import Engine

    cfg = _cfg(tmp_path, "data=small", "injection=module_probe", "engine.batch_size=4")
    real = Engine.run_batch
    calls = {"n": 0}

    def flaky(self, items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(self, items)

    monkeypatch.setattr(Engine, "run_batch", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    store = Store(cfg.results_dir)
    assert len(store.table()) == 8  # two finished batches of 4 (of 14 patterns x 2 refs x 2 prompts = 56)
    assert not [p for p in store.root.rglob("*") if p.name.startswith(".")]
    monkeypatch.setattr(Engine, "run_batch", real)
    result = run(cfg)
    assert result.done_before == 8 and result.generated == 56 - 8
    assert len(store.table()) == 56 and store.table().key.is_unique


def _cli(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "STYLEPROBE_RESULTS": str(tmp_path / "results"), "STYLEPROBE_MULTIRUN_DIR": str(tmp_path / "multirun")}
    return subprocess.run(
        [sys.executable, "-m", "styleprobe.cli", *on_tiny(args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path
    )


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    missing = tmp_path / "missing_set"
    missing.mkdir()
    (missing / "manifest.csv").write_text("image,style,content\nnot_there.png,ink,a cat\n")
    broken = tmp_path / "broken_set"
    broken.mkdir()
    (broken / "fake.png").write_text("this is not an image")
    (broken / "manifest.csv").write_text("image,style,content\nfake.png,ink,a cat\n")
    empty = tmp_path / "prompts.txt"
    empty.write_text("# nothing here\n\n")
    return [
        ([f"data.style_set={missing}"], "reference image not found"),
        ([f"data.style_set={broken}"], "fake.png"),
        (["injection.patterns=[up_blocks.9]"], "unknown layer name 'up_blocks.9'"),
        (["injection.patterns=[style_only]"], "unknown layer name 'style_only'"),
        (["injection.patterns=[one_hot:modules]"], "unknown sweep"),
        (["method.ip_adapter.subtraction=[nan]"], "method.ip_adapter.subtraction is nan"),
        (["method.ip_adapter.subtraction=[-0.5]"], "method.ip_adapter.subtraction is -0.5"),
        ([f"data.prompts={empty}"], "prompt set is empty"),
        (["method=b_lora", "method.b_lora.train_modules=up_blocks.0.attentions.0+up_blocks.3"], "unknown layer name 'up_blocks.3'"),
        (["method=b_lora", "method.b_lora.rank=0"], "method.b_lora.rank=0; give a positive integer"),
        (["method=b_lora", "method.b_lora.train_steps=0"], "method.b_lora.train_steps=0; give a positive integer"),
        (["engine.batch_size=-3"], "engine.batch_size=-3; give a positive integer or auto"),
    ]


def test_bad_input_is_one_line_before_any_model_loads(tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load", no_loading)
    for args, fragment in _bad_inputs(tmp_path):
        with pytest.raises(ConfigError) as err:
            run(_cfg(tmp_path / "results", *args))
        assert fragment in str(err.value) and "\n" not in str(err.value), args
        assert not (tmp_path / "results").exists(), args


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    for args, fragment in _bad_inputs(tmp_path)[::3]:
        proc = _cli(args, tmp_path)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("styleprobe: error:") and fragment in lines[0], (args, proc.stderr)
        assert "loading tiny" not in proc.stdout
        assert not (tmp_path / "results").exists(), args
    unknown = _cli(["model=sdxl_turbo"], tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"styleprobe: error: unknown model 'sdxl_turbo'; choose one of sd15, sdxl, sdxl_vit_h, tiny, tiny_vit_h, toy "
        f"(files in {CONFIG_DIR / 'model'})"
    ]
    assert not (tmp_path / "results").exists()


def test_group_choice_check_passes_valid_and_sweep_overrides():
    from styleprobe.cli import check_group_choices

    assert check_group_choices(["model=sdxl", "injection=style,all", "sampler.steps=3", "-m", "experiment=subtraction"]) is None
    assert "unknown injection 'stlye'" in check_group_choices(["injection=style,stlye"])
    assert "unknown experiment" in check_group_choices(["experiment=layerprobe"])
    assert check_group_choices(["method=[ip_adapter,style_aligned]"]) is None
    assert "unknown method 'stylealigned'; choose one of b_lora, ip_adapter, style_aligned" in check_group_choices(["method=stylealigned"])


def test_moved_settings_and_unknown_knobs_get_one_line():
    from styleprobe.cli import check_method_knobs, check_moved

    assert check_moved(["injection.subtraction=[0,0.5]"]) == (
        "injection.subtraction is now method.ip_adapter.subtraction (a knob of IP-Adapter's method entry); "
        "e.g. method.ip_adapter.subtraction=[0,0.5]"
    )
    assert check_moved(["injection.patterns=[style]"]) is None
    assert check_method_knobs(["method.style_aligned.adain_values=true", "method.style_aligned.sampler.steps=8",
                               "+method.ip_adapter.sampler.steps=8"]) is None
    message = check_method_knobs(["method.style_aligned.adain_value=true"])
    assert message.startswith("unknown knob 'adain_value' for method style_aligned; valid: reference_mode, adain_queries")


def test_missing_weights_offline_name_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelUnavailableError) as err:
        prepare(_cfg(tmp_path, "model=sdxl", "data=small"))
    message = str(err.value)
    assert "\n" not in message
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message and "hf download stabilityai/stable-diffusion-xl-base-1.0" in message
    local = tmp_path / "nowhere"
    with pytest.raises(ModelUnavailableError, match="local folder"):
        prepare(_cfg(tmp_path, "model=sdxl", "data=small", f"model.base={local}"))


@pytest.mark.slow
def test_cli_multirun_shares_one_model_and_one_table(tmp_path):
    proc = _cli(["-m", "data=small", "injection=style,none", "experiment=custom"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("loading tiny") == 1  # the basic launcher runs both jobs in one process
    table = Store(tmp_path / "results" / "tiny" / "custom").table()
    assert set(table.injection) == {"style", "none"} and len(table) == 8
    assert len(list((tmp_path / "results" / "tiny" / "custom" / "runs").glob("*/config.yaml"))) == 2


def _cli_imports(args: list[str], tmp_path: Path) -> tuple[str, subprocess.CompletedProcess]:
    proc, imported = cli_imports(tmp_path, *on_tiny(args), STYLEPROBE_RESULTS=str(tmp_path / "results"))
    return imported, proc


def test_a_finished_sweep_resumes_and_bad_config_fails_without_torch(tmp_path, tiny_model):
    """Validation, planning (the layer map from the UNet's config file) and the resume check import no model library."""
    args = ["data=small", "injection=style", "metrics=[style_clip]", "analyze=false", f"results_root={tmp_path}"]
    first = run(_cfg(tmp_path, *args))
    assert first.generated == 4 and first.scored == {"style_clip": 4}
    imported, proc = _cli_imports(args, tmp_path)
    assert imported == "IMPORTED []" and proc.returncode == 0, proc.stderr[-2000:]
    assert "4 already done, 0 to generate" in proc.stdout and "every row already has style_clip" in proc.stdout
    imported, proc = _cli_imports(["engine.batch_size=-3"], tmp_path)
    assert imported == "IMPORTED []" and proc.returncode == 2 and "engine.batch_size=-3" in proc.stderr
    imported, proc = _cli_imports(["--help"], tmp_path)
    assert imported == "IMPORTED []" and proc.returncode == 0 and "compact" not in proc.stderr


@pytest.mark.slow
def test_killed_run_leaves_no_partial_files_and_resumes(tmp_path):
    """SIGKILL mid-sweep: every row names a readable image, and a rerun completes without duplicates."""
    env = {**os.environ, "STYLEPROBE_RESULTS": str(tmp_path / "results")}
    args = [sys.executable, "-m", "styleprobe.cli", "model=tiny", "data=small", "engine.batch_size=2", "sampler.steps=2"]
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = tmp_path / "results" / "tiny" / "layer_probe" / "rows"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(rows.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(rows.parent)
    table = store.table()
    assert 0 < len(table) < 56
    for rel in table.image_path:
        Image.open(store.root / rel).load()
    for f in store.row_files():
        pd.read_parquet(f)
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in (done.stdout + done.stderr).splitlines() if "Warning" in line or "deprecat" in line.lower()]
    assert not noise, noise  # a default run prints no library deprecation warnings (it loads the model here)
    final = store.table()
    assert len(final) == 56 and final.key.is_unique
    assert not list(store.root.rglob(".*.tmp"))
    report = (store.root / "analysis" / "report.md").read_text()  # the default sweep ends with its report
    assert report.startswith("# styleprobe analysis") and "Machinery check, not science" in report


def test_strength_and_seed_validation(tmp_path):
    with pytest.raises(ConfigError, match="seeds has -1"):
        prepare(_cfg(tmp_path, "seeds=[-1]"))
    with pytest.raises(ConfigError, match="method.ip_adapter.scale is inf"):
        prepare(_cfg(tmp_path, "method.ip_adapter.scale=[inf]"))
    with pytest.raises(ConfigError, match="not a diffusers scheduler"):
        prepare(_cfg(tmp_path, "sampler.scheduler=EulerScheduler"))
    with pytest.raises(ConfigError, match="multiple of 8"):
        prepare(_cfg(tmp_path, "sampler.height=60"))
    with pytest.raises(ConfigError, match="patch-token"):
        prepare(_cfg(tmp_path, "model.adapter.kind=plus", "method.ip_adapter.subtraction=[0.5]"))


def test_scheduler_choice_does_not_leak_into_the_next_job(tiny_model):
    """Jobs of one process share the pipeline: `default` always means the pipeline's own scheduler."""
    from styleprobe.methods.base import method
    from styleprobe.run.engine import Engine
    from styleprobe.run.sampler import Sampler

    own = type(tiny_model.default_scheduler)
    ip = method("ip_adapter")
    Engine(tiny_model).use(ip, Sampler(2, 5.0, 64, 64, scheduler="DDIMScheduler"))
    assert type(tiny_model.pipe.scheduler).__name__ == "DDIMScheduler"
    assert tiny_model.pipe.scheduler.config.clip_sample  # DDIM's own default, over the pipeline's config
    Engine(tiny_model).use(ip, Sampler(2, 5.0, 64, 64, scheduler="DDIMScheduler", scheduler_options=(("clip_sample", False),)))
    assert not tiny_model.pipe.scheduler.config.clip_sample  # the option wins
    Engine(tiny_model).use(ip, Sampler(2, 5.0, 64, 64))
    assert type(tiny_model.pipe.scheduler) is own and own.__name__ == "EulerDiscreteScheduler"


def test_each_model_preset_brings_its_own_data_unless_one_is_given(tmp_path):
    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[f"results_root={tmp_path}", *overrides])

    toy = cfg("model=toy")
    assert (toy.data.style_set, toy.data.prompts) == ("builtin:toy", "builtin:toy")
    assert Sampler.resolve(toy.sampler, {}, toy.model).steps == 20
    assert cfg("model=toy", "experiment=benchmark").data.prompts == "builtin:toy"
    for model in ("tiny", "sdxl"):
        other = cfg(f"model={model}")
        assert (other.data.style_set, other.data.prompts) == ("builtin:shapes", "builtin:objects")
        assert cfg(f"model={model}", "experiment=benchmark").data.prompts == "builtin:benchmark"
    assert cfg("model=toy", "data=small").data.style_set == "builtin:shapes_small"  # an explicit set still wins
