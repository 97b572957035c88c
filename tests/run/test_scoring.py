"""The scoring stage: fills missing metric columns only, resumes, refuses to mix definitions, runs standalone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HEAVY, on_tiny
from hydra import compose, initialize_config_dir

from styleprobe.cli import check_group_choices
from styleprobe.config import CONFIG_DIR
from styleprobe.errors import ConfigError
from styleprobe.metrics import base as metrics_base
from styleprobe.run import scoring
from styleprobe.run.store import Store
from styleprobe.run.sweep import run as run_sweep

DEFAULT_METRICS = ["style_clip", "style_dino", "style_csd", "text_clip", "leak_clip", "ref_dinov2"]
DEFAULT_COLUMNS = [*DEFAULT_METRICS, "leak_margin", "leak_free"]


def _sweep_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=on_tiny([f"results_root={tmp_path}", "data=small", "injection=style_layout", "scoring.batch_size=3", *overrides]),
        )


def _score_cfg(results_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="score", overrides=[f"results_dir={results_dir}", "scoring.batch_size=3", *overrides])


@pytest.fixture(scope="module")
def scored_sweep(tmp_path_factory, tiny_model):
    """A small tiny-model sweep (4 images), generated and scored with the default metrics."""
    root = tmp_path_factory.mktemp("scored")
    result = run_sweep(_sweep_cfg(root))
    return root, result


def _copy(scored_sweep, tmp_path: Path) -> Store:
    """A private copy of the scored results, for tests that add to it."""
    src = scored_sweep[1].results_dir
    shutil.copytree(src, tmp_path / "results")
    return Store(tmp_path / "results")


def test_sweep_rows_carry_every_default_metric(scored_sweep):
    _, result = scored_sweep
    table = Store(result.results_dir).table()
    assert len(table) == 4 and result.generated == 4
    assert result.scored == {m: 4 for m in DEFAULT_METRICS}
    for col in DEFAULT_COLUMNS:
        assert col in table and table[col].notna().all(), col
    for m in DEFAULT_METRICS:
        assert table[f"{m}_model"].str.startswith("tiny random").all()
    assert table[["style_clip", "style_dino", "style_csd", "ref_dinov2"]].abs().le(1 + 1e-6).all().all()
    assert set(table.leak_free.unique()) <= {0.0, 1.0}
    assert (table.leak_free == (table.leak_margin < 0).astype(float)).all()


def test_each_metric_records_its_definition(scored_sweep):
    store = Store(scored_sweep[1].results_dir)
    assert store.metrics() == sorted(DEFAULT_METRICS)
    identity = store.metric_identity("style_clip")
    assert identity["scorer"] == "style_clip" and identity["weights"] == "tiny"
    assert identity["options"]["model"] == "ViT-L-14" and identity["options"]["pretrained"] == "openai"
    assert sorted(p.name for p in store.references.iterdir()) == sorted(f"{d}.png" for d in store.table().reference_digest.unique())


def test_rerun_scores_nothing(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    files = {m: store.score_files(m) for m in DEFAULT_METRICS}
    again = run_sweep(_sweep_cfg(tmp_path, f"results_dir={store.root}"))
    assert again.generated == 0 and again.scored == {m: 0 for m in DEFAULT_METRICS}
    standalone = scoring.run(_score_cfg(store.root))
    assert standalone.scored == {m: 0 for m in DEFAULT_METRICS}
    assert {m: store.score_files(m) for m in DEFAULT_METRICS} == files


def test_adding_a_metric_scores_only_that_metric(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    before = store.table()
    result = scoring.run(_score_cfg(store.root, "metrics=[default,style_clip_vit_h]"))
    assert result.scored == {**{m: 0 for m in DEFAULT_METRICS}, "style_clip_vit_h": 4}
    after = store.table()
    assert after.style_clip_vit_h.notna().all()
    pd.testing.assert_frame_equal(after[before.columns], before)


def test_changing_a_metrics_model_is_refused_before_loading(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    loads = metrics_base.LOAD_COUNT["n"]
    with pytest.raises(ConfigError, match=r"scores/style_clip holds style_clip scores made differently \(model: 'ViT-L-14' there, 'ViT-H-14' now\)"):
        scoring.run(_score_cfg(store.root, "metrics.style_clip.model=ViT-H-14"))
    with pytest.raises(ConfigError, match="weights: 'tiny' there, 'hub' now"):
        run_sweep(_sweep_cfg(tmp_path, f"results_dir={store.root}", "scoring.weights=hub"))
    assert metrics_base.LOAD_COUNT["n"] == loads


def test_an_interrupted_scoring_run_resumes(scored_sweep, tmp_path, monkeypatch):
    store = _copy(scored_sweep, tmp_path)
    shutil.rmtree(store.scores / "style_csd")
    from styleprobe.metrics.csd import StyleCSD

    real = StyleCSD.score
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(self, batch)

    monkeypatch.setattr(StyleCSD, "score", flaky)
    with pytest.raises(KeyboardInterrupt):
        scoring.run(_score_cfg(store.root))
    assert store.scored_keys("style_csd") and len(store.scored_keys("style_csd")) == 3  # first batch of 3 kept
    assert not list(store.root.rglob("*.tmp"))
    monkeypatch.setattr(StyleCSD, "score", real)
    result = scoring.run(_score_cfg(store.root))
    assert result.scored["style_csd"] == 1 and sum(result.scored.values()) == 1
    assert store.table().style_csd.notna().all()
    np.testing.assert_allclose(
        store.table().set_index("key").style_csd.sort_index(),
        Store(scored_sweep[1].results_dir).table().set_index("key").style_csd.sort_index(),
        atol=1e-6,
    )


def test_scoring_runs_on_moved_results_with_their_reference_copies(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    rows = store.rows_table()
    for f in store.row_files():  # as if the style set lived on another machine
        frame = pd.read_parquet(f)
        frame["reference"] = "/elsewhere/" + frame["reference"].str.rsplit("/", n=1).str[-1]
        frame.to_parquet(f, index=False)
    shutil.rmtree(store.scores)
    result = scoring.run(_score_cfg(store.root, "metrics=[style_csd]"))
    assert result.scored == {"style_csd": len(rows)}
    for ref in store.references.iterdir():
        ref.unlink()
    shutil.rmtree(store.scores)
    with pytest.raises(ConfigError, match=r"style reference /elsewhere/.* is not in .*references nor at its path"):
        scoring.run(_score_cfg(store.root, "metrics=[style_csd]"))


def test_bad_scoring_input_is_a_clear_error(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    with pytest.raises(ConfigError, match="no results in .*; give results_dir="):
        scoring.run(_score_cfg(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no metrics chosen"):
        scoring.run(_score_cfg(store.root, "metrics=[]"))
    with pytest.raises(ConfigError, match="scoring.batch_size=0; give a positive integer"):
        scoring.run(_score_cfg(store.root, "scoring.batch_size=0"))
    with pytest.raises(ConfigError, match="scoring.weights='huggingface'; choose one of auto, tiny, toy, hub, random"):
        scoring.run(_score_cfg(store.root, "scoring.weights=huggingface"))
    shutil.rmtree(store.scores)
    next(store.images.rglob("*.png")).unlink()
    with pytest.raises(ConfigError, match="1 images named in .* are missing"):
        scoring.run(_score_cfg(store.root))


QUALITY_METRICS = ["quality_imagereward", "quality_pickscore", "quality_hps", "quality_aesthetic"]


def test_the_quality_group_scores_only_its_four_metrics(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    result = scoring.run(_score_cfg(store.root, "metrics=[default,quality]"))
    assert result.scored == {**{m: 0 for m in DEFAULT_METRICS}, **{m: 4 for m in QUALITY_METRICS}}
    table = store.table()
    for m in QUALITY_METRICS:
        assert table[m].notna().all() and table[f"{m}_model"].str.startswith("tiny random").all(), m
        assert store.metric_roles(m) == {m: "quality:higher"}
        assert store.metric_identity(m)["reference"]  # the reference code it follows
    assert table.quality_imagereward.nunique() > 1


def test_prompt_scores_refuse_rows_without_a_prompt_before_loading(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    for path in store.row_files():
        rows = pd.read_parquet(path)
        rows.loc[rows.index[0], "prompt"] = ""
        rows.to_parquet(path)
    loads = metrics_base.LOAD_COUNT["n"]
    with pytest.raises(ConfigError, match=r"quality_imagereward, quality_hps score each image for its prompt, but \d+ of "
                                          r"4 rows .* have none .*fill in their prompt column or leave those metrics out"):
        scoring.run(_score_cfg(store.root, "metrics=[quality_imagereward,quality_hps,quality_aesthetic]"))
    assert metrics_base.LOAD_COUNT["n"] == loads and not store.score_files("quality_aesthetic")
    assert scoring.run(_score_cfg(store.root, "metrics=[quality_aesthetic]")).scored == {"quality_aesthetic": 4}


@pytest.mark.parametrize(
    ("overrides", "quality"),
    [
        (["model=sdxl", "experiment=benchmark"], True),  # real models: the benchmark scores quality by default
        (["model=sd15", "experiment=benchmark"], True),
        (["model=sdxl"], False),  # probes do not
        (["model=toy", "experiment=benchmark"], False),  # the toy keeps its judge-based set
        (["model=tiny", "experiment=benchmark"], False),
        (["model=tiny", "experiment=benchmark", "metrics=[default,quality]"], True),  # unless asked
        (["model=sdxl", "experiment=benchmark", "metrics=[default]"], False),  # an explicit list wins
    ],
)
def test_quality_is_on_in_the_benchmark_on_real_models_only(overrides, quality):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    names = list(cfg.metrics)
    assert all((m in names) == quality for m in QUALITY_METRICS), names
    assert ("judge_style" in names) == ("model=toy" in overrides)


def test_weights_follow_the_generating_model():
    assert scoring.resolve_weights("auto", ["tiny:stable-diffusion-xl-base"]) == "tiny"
    assert scoring.resolve_weights("auto", ["stabilityai/stable-diffusion-xl-base-1.0"]) == "hub"
    assert scoring.resolve_weights("auto", ["toy:stable-diffusion-xl-base"]) == "toy"
    assert scoring.resolve_weights("hub", ["tiny:stable-diffusion-xl-base"]) == "hub"
    with pytest.raises(ConfigError, match="mix hub and tiny models; set scoring.weights to one of hub, tiny"):
        scoring.resolve_weights("auto", ["tiny:x", "/models/sdxl"])
    with pytest.raises(ConfigError, match="mix tiny and toy models"):
        scoring.resolve_weights("auto", ["tiny:x", "toy:x"])


def test_shards_split_the_scoring_keys():
    import hashlib
    import json

    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:20] for i in range(100)]
    # every fourth row needs one of five LoRAs: those rows follow their LoRA's key, as the sweep's shards do
    loras = [hashlib.sha256(f"lora {j}".encode()).hexdigest()[:20] for j in range(5)]
    work = [json.dumps([loras[i % 5]]) if i % 4 == 0 else "[]" for i in range(100)]
    rows = pd.DataFrame({"key": keys, "prepare_keys": work})
    parts = [scoring.shard_keys(rows, i, 3) for i in range(3)]
    assert set().union(*parts) == set(keys) and sum(map(len, parts)) == len(keys) and all(parts)
    for lora in {w for w in work if w != "[]"}:
        same = {k for k, w in zip(keys, work) if w == lora}
        assert sum(bool(same & part) for part in parts) == 1  # one job owns all items of one LoRA
    plain = scoring.shard_keys(rows.drop(columns="prepare_keys"), 0, 3)  # rows written before prepare_keys existed
    assert plain == {k for k in keys if int(k[:12], 16) % 3 == 0}


PLAN_SCORERS = """
import json, sys
from hydra import compose, initialize_config_dir
from styleprobe.config import CONFIG_DIR
from styleprobe.models.presets import ModelSpec
from styleprobe.run import scoring

with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
    cfg = compose(config_name="config", overrides=sys.argv[1:])
spec = ModelSpec.from_config(cfg.model)
scorers, weights, _ = scoring.build(scoring.metric_configs(cfg), cfg.scoring, [spec.base])  # as sweep.prepare plans them
seen = {s.name: [s.identity(), list(s.columns), s.model_column, s.describe_model()] for s in scorers}
heavy = [m for m in %r if m in sys.modules]
assert not heavy, f"building the scorers imported {heavy}"
print(json.dumps(seen))
""" % (HEAVY,)


@pytest.mark.parametrize(
    "overrides",
    [["model=tiny"], ["model=tiny", "scoring.weights=hub", "scoring.dtype=bfloat16"],
     ["model=tiny", "metrics=[default,quality]"], ["model=sdxl", "experiment=benchmark"]],
    ids=["tiny-float32", "hub-bfloat16", "tiny-quality", "sdxl-benchmark"],
)
def test_planning_the_scorers_imports_no_torch_and_keeps_their_identities(overrides):
    """A sweep's plan and resume check build the scorers and read their identities in a process that never imports
    torch; the identities are those scorers built with torch objects give, so existing metric.yaml files still match."""
    import json

    import torch

    from styleprobe.metrics import build_scorers
    from styleprobe.models.devices import resolve_device
    from styleprobe.models.presets import ModelSpec

    done = subprocess.run([sys.executable, "-c", PLAN_SCORERS, *overrides], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    planned = json.loads(done.stdout.strip().splitlines()[-1])

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    device = resolve_device(str(cfg.scoring.device))
    weights = scoring.resolve_weights(str(cfg.scoring.weights), [ModelSpec.from_config(cfg.model).base])
    dtype = getattr(torch, str(cfg.scoring.dtype))
    here = build_scorers(scoring.metric_configs(cfg), device, weights, scoring.preprocess_on_device("auto", device), dtype)
    assert planned == {s.name: [s.identity(), list(s.columns), s.model_column, s.describe_model()] for s in here}
    quality = "quality" in " ".join(overrides) or "experiment=benchmark" in overrides
    assert sorted(planned) == sorted(DEFAULT_METRICS + (QUALITY_METRICS if quality else []))
    for identity, *_, model in planned.values():
        if dtype == torch.float32:
            assert "dtype" not in identity and " in " not in model
        else:
            assert identity["dtype"] == "bfloat16" and model.endswith(" in bfloat16")


def test_metric_list_overrides_are_checked():
    assert check_group_choices(["metrics=[default,style_clip_vit_h]"]) is None
    old = check_group_choices(["metrics=[default,leak_dino]"])
    assert old is not None and old.startswith("metric 'leak_dino' is now 'ref_dinov2'")
    assert check_group_choices(["metrics=[]"]) is None
    bad = check_group_choices(["metrics=[default,style_clp]"])
    assert bad is not None and bad.startswith("unknown metrics 'style_clp'; choose one of benchmark, default, judge, leak_clip, quality")


def test_score_command_from_the_shell(scored_sweep, tmp_path):
    store = _copy(scored_sweep, tmp_path)
    shutil.rmtree(store.scores / "text_clip")
    cmd = [sys.executable, "-m", "styleprobe.cli", "score", f"results_dir={store.root}", "metrics=[text_clip]"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "scored text_clip 4" in first.stdout + first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "nothing to score" in second.stdout + second.stderr
    assert len(list(store.runs.iterdir())) == len(list(Store(scored_sweep[1].results_dir).runs.iterdir())) + 1
    bad = subprocess.run([*cmd[:3], "score", "metrics=[text_clip]"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    typo = subprocess.run([*cmd[:3], "scroe"], capture_output=True, text=True, timeout=300)
    assert typo.returncode == 2 and typo.stderr.strip() == "styleprobe: error: unknown command 'scroe'; use one of sweep, score, analyze, status, compact"
