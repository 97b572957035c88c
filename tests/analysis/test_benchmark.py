"""The method benchmark: its config, its set, shards that keep per-reference work in one job, the analysis on a
planted ordering, and the default `experiment=benchmark` end to end (with a rerun that makes nothing) and its notebook."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir

from styleprobe.analysis import benchmark as bench
from styleprobe.analysis import default_settings
from styleprobe.analysis.stats import Bootstrap
from styleprobe.config import CONFIG_DIR
from styleprobe.data.prompt_sets import load_prompts
from styleprobe.errors import AnalysisError
from styleprobe.methods.base import REGISTRY, Method, registry

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "benchmark.ipynb"
BOOT = Bootstrap(n_boot=500, seed=0)


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={root}", "experiment=benchmark", *overrides]))


def _no_model(monkeypatch):
    from styleprobe.models import loading

    monkeypatch.setattr(loading, "load", lambda *a, **k: pytest.fail("planning loaded a model"))


# the config and the set -------------------------------------------------------------------------------------------
def test_the_prompt_set_has_forty_prompts_with_subjects_and_no_reference_content():
    prompts = load_prompts("builtin:benchmark")
    assert len(prompts) >= 40 and len({p.prompt for p in prompts}) == len(prompts)
    assert all(p.subject and len(p.subject) <= len(p.prompt) for p in prompts)
    words = {w.strip(",.").lower() for p in prompts for w in p.prompt.split()}
    assert not words & {"circle", "square", "triangle", "house", "style"}  # the references' contents; no style words


def test_every_contender_gets_the_same_units_and_its_own_prompt_convention(tmp_path, monkeypatch):
    from styleprobe.run.sweep import prepare

    _no_model(monkeypatch)
    plan = prepare(_cfg(tmp_path, "seeds=[0,1]"))
    rows = pd.DataFrame([it.row for it in plan.items])
    groups = rows.groupby(["method", "injection", "scale", "subtraction", "nvqg_weight"], dropna=False)
    assert {k[:2] for k in groups.groups} == {("ip_adapter", "all"), ("ip_adapter", "style"), ("ip_adapter", "style_layout"),
                                              ("style_aligned", "all"), ("b_lora", "style"),
                                              ("visual_style_prompting", "up_blocks.1")}
    assert sorted(rows.loc[(rows.method == "ip_adapter") & (rows.injection == "style"), "subtraction"].unique()) == [0.0, 0.5]
    assert set(rows.loc[rows.injection == "all", "subtraction"].dropna()) == {0.0}
    assert len(groups) == 10  # IP-Adapter at two scales, four InstantStyle settings, StyleAligned, B-LoRA, VSP +- NVQG
    assert set(rows.loc[rows.method == "visual_style_prompting", "nvqg_weight"]) == {0.0, 1.0}
    units = {name: set(zip(g.reference_digest, g.prompt, g.seed)) for name, g in groups}
    first = next(iter(units.values()))
    assert len(first) == 4 * 44 * 2 and all(u == first for u in units.values())
    used = rows.groupby("method")["prompt_used"].first()
    prompt = rows.groupby("method")["prompt"].first()
    assert used["ip_adapter"] == prompt["ip_adapter"]
    assert used["b_lora"] == prompt["b_lora"] + " in [v] style"
    assert used["style_aligned"].startswith(prompt["style_aligned"] + ", ")
    assert used["visual_style_prompting"] == prompt["visual_style_prompting"]  # the real-image script's tar_obj
    # each method's own sampler: StyleAligned's notebook and B-LoRA's inference.py run 50 steps, on every model
    assert (rows[rows.method == "style_aligned"].steps == 50).all() and (rows[rows.method == "b_lora"].steps == 50).all()
    assert (rows[rows.method == "visual_style_prompting"].steps == 50).all()
    assert (rows[rows.method == "ip_adapter"].steps == 4).all()  # the tiny preset's (SDXL's: 30)


def test_a_contender_is_dropped_or_added_with_one_override(tmp_path, monkeypatch):
    from styleprobe.run.sweep import prepare

    _no_model(monkeypatch)
    dropped = prepare(_cfg(tmp_path, "~method.b_lora", "data=small"))
    assert "b_lora" not in {it.row["method"] for it in dropped.items}
    added = prepare(_cfg(tmp_path, "+method.ip_quarter={type: ip_adapter, patterns: [all], scale: 0.25}", "data=small"))
    scales = {(it.row["injection"], it.row["scale"]) for it in added.items if it.row["method"] == "ip_adapter"}
    assert {("all", 0.25), ("all", 0.5), ("all", 1.0)} <= scales


#: The sources' negative prompts (h94's IPAdapterXL.generate default; InstantStyle's infer_style.py).
H94_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
INSTANTSTYLE_NEGATIVE = ("text, watermark, lowres, low quality, worst quality, deformed, glitch, low contrast, noisy, "
                         "saturation, blurry")


def _planned(tmp_path: Path, *overrides: str) -> pd.DataFrame:
    from styleprobe.run.sweep import prepare

    return pd.DataFrame([it.row for it in prepare(_cfg(tmp_path, "data=small", *overrides)).items])


def test_plain_ip_adapter_runs_at_scales_half_and_one_with_readable_names(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    settings = default_settings().benchmark
    expected = ["IP-Adapter (scale=0.5)", "IP-Adapter (scale=1.0)", "InstantStyle style (subtraction=0.0)",
                "InstantStyle style (subtraction=0.5)", "InstantStyle style+layout (subtraction=0.0)",
                "InstantStyle style+layout (subtraction=0.5)", "StyleAligned", "B-LoRA",
                "Visual Style Prompting (nvqg_weight=0.0)", "Visual Style Prompting (nvqg_weight=1.0)"]
    # the tiny preset (no negative prompts) and every source's own negative prompt: the entries' negative prompts
    # differ, but only between names, so no name gets a negative_prompt (or scale) suffix
    for overrides in ((), ("~model.method_defaults.ip_adapter",)):
        rows = _planned(tmp_path, *overrides)
        ip = rows[rows.method == "ip_adapter"]
        assert sorted(ip.loc[ip.injection == "all", "scale"].unique()) == [0.5, 1.0]
        assert set(ip.loc[ip.injection != "all", "scale"]) == {1.0}
        table = bench.with_contenders(rows, settings)
        assert bench.contenders(table) == expected, overrides
        assert bench.reference_contender(table, settings) == "InstantStyle style (subtraction=0.0)"
        assert table.groupby("contender").size().nunique() == 1  # every contender on the same units


def test_each_contender_gets_its_sources_negative_prompt_and_steps(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    rows = _planned(tmp_path, "~model.method_defaults.ip_adapter")  # as on a model whose text towers know English
    negative = rows.groupby(["method", "injection"])["negative_prompt"].unique().map(list)
    assert negative[("ip_adapter", "all")] == [H94_NEGATIVE]
    assert negative[("ip_adapter", "style")] == negative[("ip_adapter", "style_layout")] == [INSTANTSTYLE_NEGATIVE]
    assert negative[("style_aligned", "all")] == negative[("b_lora", "style")] == [""]
    steps = rows.groupby("method")["steps"].unique().map(list)
    assert steps["b_lora"] == [50] and steps["style_aligned"] == [50] and steps["ip_adapter"] == [4]
    # the tiny preset empties the English negative prompts; a command-line sampler.negative_prompt still wins
    assert set(_planned(tmp_path)["negative_prompt"]) == {""}
    assert set(_planned(tmp_path, "sampler.negative_prompt=blurry")["negative_prompt"]) == {"blurry"}
    # SDXL (composed only: planning it needs its UNet config) gets the sources' values; the toy preset empties them
    for model, h94, instantstyle in (("sdxl", H94_NEGATIVE, INSTANTSTYLE_NEGATIVE), ("toy", "", "")):
        cfg = _cfg(tmp_path, f"model={model}")
        assert cfg.method.ip_adapter.sampler.negative_prompt == h94, model
        assert cfg.method.instantstyle.sampler.negative_prompt == instantstyle, model
        assert cfg.method.b_lora.sampler.steps == 50 and list(cfg.method.ip_adapter.scale) == [0.5, 1.0]


def _composed_rows(cfg) -> pd.DataFrame:
    """One row per contender as the config would plan it, without the model's UNet: the sampler each entry resolves
    and its knobs (lists crossed), for a preset whose weights are not here."""
    import itertools

    from omegaconf import OmegaConf

    from styleprobe.methods.base import ENTRY_SETTINGS, knob_names, method
    from styleprobe.run.sampler import Sampler

    rows = []
    for entry, body in OmegaConf.to_container(cfg.method, resolve=True).items():
        plugin = method(body.get("type", entry))
        sampler = Sampler.resolve(cfg.sampler, {**plugin.sampler_defaults, **(body.get("sampler") or {})}, cfg.model)
        given = {k: v if isinstance(v, list) else [v] for k, v in body.items() if k not in ENTRY_SETTINGS}
        defaults = {f.name: f.default for f in dataclasses.fields(plugin.Knobs)}
        for combo in itertools.product(*given.values()):
            for injection in body["patterns"]:
                rows.append({**defaults, **dict(zip(given, combo)), "method": plugin.name, "injection": injection,
                             "model": cfg.model.name, "steps": sampler.steps, "guidance": sampler.guidance,
                             "height": sampler.height, "scheduler": sampler.scheduler_id,
                             "negative_prompt": sampler.negative_prompt, "knob_columns": json.dumps(knob_names(plugin.name)),
                             "reference_digest": "r", "prompt": "p"})
    return pd.DataFrame(rows)


def test_on_sdxl_the_benchmark_departs_from_no_source_but_where_it_says_why(tmp_path):
    settings = default_settings().benchmark
    table = bench.with_contenders(_composed_rows(_cfg(tmp_path, "model=sdxl")), settings)
    found = bench.departures(table, settings)
    assert set(found["contender"]) == set(bench.contenders(table)) and (found["setting"] != "").all()  # every one has a recipe
    gone = found[found["departs"]]
    # B-LoRA's 8-bit Adam is the one departure on SDXL, and the recipe states why
    assert list(zip(gone["contender"], gone["setting"])) == [("B-LoRA", "optimizer")]
    assert "bitsandbytes" in gone["reason"].iloc[0] and gone["ours"].iloc[0] == "adamw"
    checked = set(found.loc[found["contender"] == "InstantStyle style (subtraction=0.5)", "setting"])
    assert {"steps", "guidance", "scheduler", "height", "negative_prompt", "scale", "subtraction"} <= checked


def test_departures_name_the_tiny_presets_shortcuts_and_their_reasons(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    settings = default_settings().benchmark
    found = bench.departures(bench.with_contenders(_planned(tmp_path), settings), settings)
    gone = {(r.contender, r.setting): r for r in found[found["departs"]].itertuples()}
    ip = gone[("IP-Adapter (scale=0.5)", "steps")]
    assert (ip.ours, ip.recipe) == ("4", "30") and "tiny model checks machinery" in ip.reason
    assert gone[("IP-Adapter (scale=0.5)", "negative_prompt")].recipe == H94_NEGATIVE
    assert "random weights" in gone[("InstantStyle style (subtraction=0.0)", "negative_prompt")].reason
    assert {s for c, s in gone if c == "StyleAligned"} == {"height"}  # its 50 DDIM steps at guidance 10 are its source's
    assert {s for c, s in gone if c == "B-LoRA"} == {"height", "train_steps", "learning_rate", "optimizer"}
    assert "20 steps" in gone[("B-LoRA", "train_steps")].reason and "bitsandbytes" in gone[("B-LoRA", "optimizer")].reason
    # a setting set on the command line has no stated reason: the report says it is not the source's
    found = bench.departures(bench.with_contenders(_planned(tmp_path, "method.instantstyle.scale=0.8"), settings), settings)
    scale = found[(found["contender"] == "InstantStyle style (subtraction=0.0)") & (found["setting"] == "scale")].iloc[0]
    assert scale["departs"] and scale["reason"] == bench.UNSTATED


def test_shards_keep_each_lora_and_inversion_in_one_job(tmp_path, monkeypatch):
    from styleprobe.run.sweep import prepare

    _no_model(monkeypatch)
    full = prepare(_cfg(tmp_path, "method.b_lora.train_seed=[0,1]")).items
    shards = [prepare(_cfg(tmp_path, "method.b_lora.train_seed=[0,1]", f"shard.index={i}", "shard.count=3")).items
              for i in range(3)]
    keys = [{it.key for it in part} for part in shards]
    assert set().union(*keys) == {it.key for it in full} and sum(map(len, keys)) == len(full)
    work = {k for it in full for k in json.loads(it.row["prepare_keys"])}
    assert len(work) == 4 * 2 + 4 + 4  # a LoRA per reference and training seed, an inversion and a noised reference (VSP) per reference
    for key in work:
        owners = [i for i, part in enumerate(shards) if any(key in json.loads(it.row["prepare_keys"]) for it in part)]
        assert len(owners) == 1, key
    assert all(json.loads(it.row["prepare_keys"]) == [] for it in full if it.row["method"] == "ip_adapter")


# the analysis on a planted ordering --------------------------------------------------------------------------------
def _planted(seed: int = 0) -> pd.DataFrame:
    """Six references x eight prompts x two seeds. Each unit has its own level, shared by every contender (so pairing
    matters); B-LoRA has two training-seed replicates. Planted means (style_csd, text_clip, leak_clip):
      copy (the reference itself): 1.00, 0.10, 0.40   - best style, worst text and leakage
      IP-Adapter:                  0.70, 0.20, 0.30
      InstantStyle style:          0.60, 0.26, 0.15   - the reference contender
      InstantStyle tie:            0.60, 0.26, 0.15   - the same numbers: its differences must straddle 0
      StyleAligned:                0.50, 0.27, 0.14
      B-LoRA:                      0.55, 0.24, 0.20   - dominated by InstantStyle style on both pairs
    """
    rng = np.random.default_rng(seed)
    contenders = [
        ({"method": "copy_reference", "injection": "all"}, (1.00, 0.10, 0.40), [""]),
        ({"method": "ip_adapter", "injection": "all", "subtraction": 0.0, "scale": 1.0}, (0.70, 0.20, 0.30), [""]),
        ({"method": "ip_adapter", "injection": "style", "subtraction": 0.0, "scale": 1.0}, (0.60, 0.26, 0.15), [""]),
        ({"method": "ip_adapter", "injection": "style", "subtraction": 0.5, "scale": 1.0}, (0.60, 0.26, 0.15), [""]),
        ({"method": "style_aligned", "injection": "all"}, (0.50, 0.27, 0.14), [""]),
        ({"method": "b_lora", "injection": "style"}, (0.55, 0.24, 0.20), ["train_seed=0", "train_seed=1"]),
    ]
    rows = []
    for r in range(6):
        for p in range(8):
            level = rng.normal(0, 0.05, 3)
            for s in range(2):
                for cond, means, replicates in contenders:
                    for rep in replicates:
                        noise = rng.normal(0, 0.004, 3)
                        style, text, leak = np.asarray(means) + level + noise
                        rows.append({**cond, "reference_digest": f"ref{r}", "style": f"style{r}", "prompt": f"prompt {p}",
                                     "seed": s, "replicate": rep, "style_csd": style, "text_clip": text, "leak_clip": leak})
    table = pd.DataFrame(rows)
    for metric in ("style_csd", "text_clip", "leak_clip"):
        table[f"{metric}_model"] = "planted"
    table["model"] = "planted"
    table["knob_columns"] = json.dumps(["scale", "subtraction"])
    return table


def test_the_method_table_and_paired_cis_recover_a_planted_ordering():
    settings = default_settings().benchmark
    table = bench.with_contenders(_planted(), settings)
    names = bench.contenders(table)
    assert names[:2] == ["IP-Adapter", "InstantStyle style (subtraction=0.0)"]
    assert "copy_reference: all" in names and "B-LoRA" in names
    reference = bench.reference_contender(table, settings)
    assert reference == "InstantStyle style (subtraction=0.0)"
    summary = bench.method_table(table, ["style_csd", "text_clip", "leak_clip"], reference, settings, BOOT)
    row = summary.set_index(["contender", "metric"])
    style = row.xs("style_csd", level="metric")["mean"].sort_values(ascending=False)
    assert list(style.index[:2]) == ["copy_reference: all", "IP-Adapter"]
    assert row.loc[("copy_reference: all", "style_csd"), "mean"] == pytest.approx(1.0, abs=0.03)
    copy = row.loc["copy_reference: all"]
    assert copy.loc["style_csd", "diff_low"] > 0.35 and copy.loc["style_csd", "better"] == "better"
    assert copy.loc["text_clip", "diff_high"] < -0.1 and copy.loc["text_clip", "better"] == "worse"
    assert copy.loc["leak_clip", "better"] == "worse"  # more leakage is worse
    tie = row.loc["InstantStyle style (subtraction=0.5)"]
    assert (tie["excludes_zero"] == 0).all() and (tie["diff_low"] < 0).all() and (tie["diff_high"] > 0).all()
    # pairing: the unit is (reference, prompt); seeds and B-LoRA's two replicates are averaged within it first
    assert set(summary["n_units"]) == {48} and set(summary["n_paired"].dropna()) == {48}
    # the pairs remove the units' shared spread: the paired CI is far narrower than either mean's
    sa = row.loc[("StyleAligned", "style_csd")]
    assert (sa["diff_high"] - sa["diff_low"]) < 0.25 * (sa["high"] - sa["low"])
    assert row.loc[("InstantStyle style (subtraction=0.0)", "style_csd"), "excludes_zero"] == 0


def test_the_pareto_front_recovers_the_planted_one():
    settings = default_settings().benchmark
    table = bench.with_contenders(_planted(), settings)
    summary = bench.method_table(table, ["style_csd", "text_clip", "leak_clip"], bench.reference_contender(table, settings),
                                 settings, BOOT)
    points = bench.tradeoffs(summary, "style_csd", ["text_clip", "leak_clip"]).set_index("contender")
    text_front = set(points.index[points["front_text_clip"]])
    # style up, text up: copy (most style), IP-Adapter, InstantStyle style or its tie (whichever noise favours), StyleAligned
    assert {"copy_reference: all", "IP-Adapter", "StyleAligned"} <= text_front
    assert "B-LoRA" not in text_front and len(text_front & {"InstantStyle style (subtraction=0.0)",
                                                             "InstantStyle style (subtraction=0.5)"}) >= 1
    leak_front = set(points.index[points["front_leak_clip"]])
    assert "B-LoRA" not in leak_front and {"copy_reference: all", "StyleAligned"} <= leak_front


def test_pareto_front_by_hand():
    points = pd.DataFrame({"x": [1.0, 2.0, 3.0, 2.0, np.nan], "y": [3.0, 2.0, 1.0, 1.5, 9.0]})
    assert list(bench.pareto_front(points, "x", "y")) == [True, True, True, False, False]
    assert list(bench.pareto_front(points, "x", "y", (True, False))) == [False, False, True, False, False]
    ties = pd.DataFrame({"x": [1.0, 1.0], "y": [2.0, 2.0]})
    assert list(bench.pareto_front(ties, "x", "y")) == [True, True]  # equal points do not dominate each other


def test_published_numbers_are_ranked_beside_ours():
    settings = default_settings().benchmark
    table = bench.with_contenders(_planted(), settings)
    summary = bench.method_table(table, ["style_csd", "text_clip", "leak_clip"], bench.reference_contender(table, settings),
                                 settings, BOOT)
    tables = [
        {"source": "A", "protocol": "p", "metrics": {"T": "text_clip", "X": None},
         "values": {"IP-Adapter": {"T": 0.2, "X": 1}, "StyleAligned": {"T": 0.3, "X": 2}, "InstantStyle": {"T": 0.25}}},
        {"source": "B", "protocol": "q", "metrics": {"S": "style_csd"},
         "values": {"StyleAligned": {"S": 0.9}, "InstantStyle": {"S": 0.5}, "Other": {"S": 0.7}}},
    ]
    out = bench.published_comparison(summary, table, settings, tables)
    a = out[(out.source == "A") & (out.their_metric == "T")].set_index("method")
    assert list(a.rank_published) == [3, 1, 2] and list(a.rank_ours) == [3, 1, 2] and a.rank_agreement.all()  # 0.20 < 0.26 < 0.27
    b = out[out.source == "B"].set_index("method")
    assert b.loc["StyleAligned", "rank_ours"] == 2 and b.loc["InstantStyle", "rank_ours"] == 1 and not b.rank_agreement.iloc[0]
    assert b.loc["Other", "contender"] == "" and np.isnan(b.loc["Other", "ours"])  # no contender of ours
    x = out[out.their_metric == "X"]
    assert x.metric.eq("").all() and x.ours.isna().all() and x.rank_agreement.isna().all()
    shipped = bench.published_tables()
    assert {"B-LoRA", "StyleAligned", "InstantStyle", "IP-Adapter"} <= {m for t in shipped for m in t["values"]}


def test_published_numbers_are_context_for_toy_and_tiny_and_rank_agreement_for_real_models():
    from styleprobe.analysis.benchmark_report import _published

    settings = default_settings().benchmark
    table = bench.with_contenders(_planted(), settings)
    summary = bench.method_table(table, ["style_csd", "text_clip", "leak_clip"], bench.reference_contender(table, settings),
                                 settings, BOOT)
    for model in ("toy", "tiny", "sdxl"):
        out = bench.published_comparison(summary, table.assign(model=model), settings)
        text = "\n".join(_published(out))
        assert len(out) and out["rank_ours"].notna().any(), model  # ours beside theirs either way
        if model == "sdxl":
            assert "rank_agreement" in out and not out.attrs["context_only"]
            assert "rank agreement" in text and "not a check" in text and "| rank agreement |" in text
        else:  # a 64 px model beside SDXL papers: context, no agreement judged
            assert "rank_agreement" not in out and "agrees" not in out and out.attrs["context_only"], model
            assert "for context only" in text and "agree" not in text.replace("no agreement", ""), model


def test_reference_and_settings_errors_are_one_line():
    settings = default_settings().benchmark
    table = bench.with_contenders(_planted(), settings)
    bad = dataclasses.replace(settings, reference={"method": "ip_adapter"})
    with pytest.raises(AnalysisError, match=r"selects 3 contenders .*; name exactly one of"):
        bench.reference_contender(table, bad)
    with pytest.raises(AnalysisError, match="selects no contender; name exactly one of"):
        bench.reference_contender(table, dataclasses.replace(settings, reference={"method": "ip_adapter", "injection": "none"}))
    with pytest.raises(AnalysisError, match="names column.* lora_rank the table lacks"):
        bench.reference_contender(table, dataclasses.replace(settings, reference={"lora_rank": 4}))
    with pytest.raises(AnalysisError, match="unknown analysis.benchmark setting colour"):
        default_settings(**{"benchmark.colour": 1})
    with pytest.raises(AnalysisError, match="analysis.kind='bench'; choose auto, probe or benchmark"):
        default_settings(kind="bench")


# end to end ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _NoKnobs:
    pass


class CopyReference(Method):
    """A planted contender whose image is the style reference itself: it must win style similarity."""

    name: ClassVar[str] = "copy_reference"
    pattern_site: ClassVar[str] = "attn2"
    Knobs: ClassVar[type] = _NoKnobs

    def activate(self, model: Any) -> None:
        pass

    def deactivate(self, model: Any) -> None:
        pass

    def run_batch(self, engine: Any, items: Any) -> list[Any]:
        return [it.reference.load() for it in items]  # the very pixels every style scorer compares with


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory, tiny_model):
    """`experiment=benchmark` on the tiny model (6 of its prompts, to spare CI; the full default is timed in the README),
    plus the planted copy-of-the-reference contender; then a rerun."""
    from styleprobe.run.sweep import run

    registry()[CopyReference.name] = CopyReference
    try:
        root = tmp_path_factory.mktemp("benchmark")
        cfg = _cfg(root, "+method.copy_reference={patterns: [all]}", "data.prompts=builtin:objects",
                   "metrics=[default,quality]")  # the quality scores too, on their tiny stand-ins
        first = run(cfg)
        artefacts = {p: p.stat().st_mtime_ns for p in (first.results_dir / "artefacts").rglob("*") if p.is_file()}
        again = run(cfg)
        yield first, again, artefacts
    finally:
        REGISTRY.pop(CopyReference.name, None)


def test_the_benchmark_runs_end_to_end_and_reruns_nothing(benchmark_run):
    first, again, artefacts = benchmark_run
    assert first.planned == first.generated == 4 * 6 * 11 and set(first.scored.values()) == {first.planned}
    assert again.generated == 0 and again.done_before == first.planned and not any(again.scored.values())
    now = {p: p.stat().st_mtime_ns for p in (first.results_dir / "artefacts").rglob("*") if p.is_file()}
    assert now == artefacts  # no LoRA trained, no reference inverted again
    assert len([p for p in artefacts if p.name == "pytorch_lora_weights.safetensors"]) == 4
    assert first.report.kind == "benchmark"


def test_the_report_has_every_part(benchmark_run):
    first, _, _ = benchmark_run
    out = first.results_dir / "analysis"
    text = (out / "report.md").read_text()
    for heading in ("## Contenders", "## Method table", "## Trade-offs and the Pareto front", "## Cost",
                    "## Published numbers, for context only", "Machinery check, not science"):
        assert heading in text, heading
    assert "rank agreement" not in text and "| agrees |" not in text  # the tiny model: context, not a comparison
    # each contender's departures from its source, in its row, with the reasons below the table
    assert "| departs from its source |" in text and "Why they depart:" in text
    row = next(line for line in text.splitlines() if line.startswith("| IP-Adapter (scale=0.5) |"))
    assert "steps 4 (source: 30)" in row and "negative_prompt none (source: monochrome, lowres, bad anatomy, ...)" in row
    assert "`optimizer` (B-LoRA): bitsandbytes'" in text and "tiny model checks machinery" in text
    assert "| copy_reference: all |" in text and "no recipe recorded" in text
    for name in ("benchmark_tradeoffs", "benchmark_quality", "benchmark_grid"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000 and (out / "figures" / f"{name}.pdf").is_file()
    for name in ("benchmark_methods", "benchmark_tradeoffs", "benchmark_quality", "benchmark_costs", "benchmark_published",
                 "benchmark_recipes"):
        assert (out / "tables" / f"{name}.csv").is_file()
    # the quality scores: in the method table with their role, each with its style-vs-quality front
    for m in ("quality_imagereward", "quality_pickscore", "quality_hps", "quality_aesthetic"):
        assert f"- `{m}`: {m} (tiny random" in text and "measures image quality, higher is better" in text, m
        assert f"- style_csd vs {m}: on the front" in text, m
    quality = pd.read_csv(out / "tables" / "benchmark_quality.csv")
    assert {"front_quality_hps", "quality_hps_mean", "quality_hps_low"} <= set(quality.columns)
    published = pd.read_csv(out / "tables" / "benchmark_published.csv")
    image_reward = published[published.their_metric == "ImageReward"]
    assert (image_reward.metric == "quality_imagereward").all() and image_reward.ours.notna().any()
    assert "Paired difference to **InstantStyle style (subtraction=0.0)**" in text
    assert "B-LoRA" in text and "StyleAligned" in text and "a bicycle leaning against a wall in [v] style" in text


def test_the_planted_copy_wins_style_in_the_report(benchmark_run):
    first, _, _ = benchmark_run
    out = first.results_dir / "analysis" / "tables"
    summary = pd.read_csv(out / "benchmark_methods.csv").set_index(["contender", "metric"])
    for metric in ("style_csd", "style_clip", "style_dino"):
        means = summary.xs(metric, level="metric")["mean"]
        assert means.idxmax() == "copy_reference: all", metric
        assert means.max() == pytest.approx(1.0, abs=1e-3)  # an image's similarity to itself
        row = summary.loc[("copy_reference: all", metric)]
        # the per-comparison CI excludes 0; the mark is the Holm decision over the whole family (4 references here)
        assert row["diff_low"] > 0
        assert (row["better"] == "better") if row["holm"] else pd.isna(row["better"])
    points = pd.read_csv(out / "benchmark_tradeoffs.csv").set_index("contender")
    assert points.loc["copy_reference: all", "front_text_clip"]  # nobody has more style


def test_the_cost_table_comes_from_the_runs_measurements(benchmark_run):
    first, _, _ = benchmark_run
    costs = pd.read_csv(first.results_dir / "analysis" / "tables" / "benchmark_costs.csv").set_index("contender")
    assert (costs["images"] == 4 * 6).all() and (costs["timed_images"] == costs["images"]).all()
    assert (costs["seconds_per_image"] > 0).all() and costs["peak_gpu_gib"].isna().all()  # the CPU has no GPU peak
    assert costs.loc["StyleAligned", "preparation"] == "ddim inversion" and costs.loc["StyleAligned", "prepared"] == 4
    assert costs.loc["B-LoRA", "preparation"] == "b_lora training" and costs.loc["B-LoRA", "prepared"] == 4
    assert costs.loc["B-LoRA", "prep_seconds_per_reference"] > 0 and costs.loc["StyleAligned", "prep_seconds_per_reference"] > 0
    assert costs.loc["IP-Adapter (scale=1.0)", "prepared"] == 0
    # per-reference preparation: the trainings recorded in the run's costs.yaml, once each
    records = bench.preparation_records([first.results_dir])
    assert sorted(records["what"].value_counts().items()) == [("b_lora training", 4), ("ddim inversion", 4),
                                                              ("noised reference", 4)]
    assert not records["reused"].any()


def test_the_benchmark_notebook_runs_on_the_tiny_run(benchmark_run, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    first, _, _ = benchmark_run
    monkeypatch.setenv("STYLEPROBE_RESULTS_DIR", str(first.results_dir))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(first.results_dir) in printed and "paired against: InstantStyle style (subtraction=0.0)" in printed
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "copy_reference: all" in html and "b_lora training" in html and "RB-Modulation" in html
    assert "train_steps" in html and "tiny model checks machinery" in html  # the departures cell


def test_auto_kind_tells_a_benchmark_from_a_probe():
    table = _planted().assign(sweep="preset")
    assert bench.is_benchmark(table)
    assert not bench.is_benchmark(table[table.method == "ip_adapter"])  # one method: a probe
    with_none = pd.concat([table, table.head(3).assign(injection="none")])
    assert not bench.is_benchmark(with_none)  # methods side by side with their `none` baseline: judged per method
    assert not bench.is_benchmark(table.assign(sweep="one_hot_module"))
    assert bench.is_benchmark(table.assign(sweep="explicit"))  # a method's own named site (VSP's up_blocks.1)


def test_preparation_records_keep_each_piece_of_work_once(tmp_path):
    import yaml

    def run(name: str, reused: bool, seconds: float) -> None:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        record = {"what": "b_lora training", "key": "aa11", "style": "ink", "seconds": seconds, "peak_gpu_bytes": None,
                  "reused": reused}
        costs = {"device": "cuda:0", "methods": {"b_lora": {"prepared": [record]}, "ip_adapter": {"prepared": []}}}
        (folder / "costs.yaml").write_text(yaml.safe_dump(costs))

    run("2026-1", False, 61.5)  # the run that trained it
    run("2026-2", True, 61.5)  # a later run that found it made
    records = bench.preparation_records([tmp_path])
    assert len(records) == 1 and not records["reused"].iloc[0] and records["run"].iloc[0] == "2026-1"
    table = pd.DataFrame({"contender": ["B-LoRA", "B-LoRA", "IP-Adapter"], "prepare_keys": ['["aa11"]', '["aa11"]', "[]"],
                          "seconds": [0.5, 0.7, 0.2], "peak_gpu_bytes": [2**31, 2**30, np.nan]})
    costs = bench.cost_table(table, records).set_index("contender")
    assert costs.loc["B-LoRA", "prepared"] == 1 and costs.loc["B-LoRA", "prep_seconds_per_reference"] == 61.5
    assert costs.loc["B-LoRA", "seconds_per_image"] == pytest.approx(0.6) and costs.loc["B-LoRA", "peak_gpu_gib"] == 2.0
    assert costs.loc["B-LoRA", "total_seconds"] == pytest.approx(1.2 + 61.5)
    assert costs.loc["IP-Adapter", "prepared"] == 0 and np.isnan(costs.loc["IP-Adapter", "peak_gpu_gib"])
