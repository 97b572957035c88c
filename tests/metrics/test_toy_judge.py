"""Ground truth in the toy world: the judge as a metric (judge_style, judge_shape, judge_leak), the toy's metric set and
analysis settings, and the validity table that measures every other metric against the judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from styleprobe.analysis import validity
from styleprobe.analysis.load import load_results, metric_role, with_preset_metrics
from styleprobe.analysis.report import AnalysisSettings, analyze, default_settings
from styleprobe.config import CONFIG_DIR
from styleprobe.errors import ConfigError
from styleprobe.metric_roles import MetricRole
from styleprobe.metrics import ScoreBatch, build_scorers
from styleprobe.metrics.judge import shape_class
from styleprobe.models.toy import world
from styleprobe.run.store import Store

JUDGE = {"judge_style": {"scorer": "toy_judge", "shape_column": "judge_shape", "leak_column": "judge_leak"}}


def _compose(tmp_path: Path, *overrides: str, config: str = "config"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=[f"results_root={tmp_path}", *overrides] if config == "config"
                       else list(overrides))


# the scorer --------------------------------------------------------------------------------------------------------
def test_subjects_and_content_labels_map_to_the_toy_shapes():
    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set

    assert [shape_class(p.subject) for p in load_prompts("builtin:toy")] == list(range(len(world.CONTENTS)))
    for ref in load_style_set("builtin:toy"):
        assert world.CONTENTS[shape_class(ref.content)] in ref.content
    assert shape_class("two red crosses") == world.CONTENTS.index("cross") and shape_class("Stars") == 3
    assert shape_class("a cat") is None and shape_class("a star and a heart") is None and shape_class("") is None


@pytest.fixture(scope="module")
def judge():
    (scorer,) = build_scorers(JUDGE, "cpu", "toy")
    return scorer


def _batch(outputs: list[world.ToySample], references: list[world.ToySample], prompted: list[int]) -> ScoreBatch:
    """Outputs drawn by the world itself, so their true shape and style are known; prompts name shapes only."""
    subjects = [world.caption(world.CONTENTS[c], None) for c in prompted]
    return ScoreBatch(images=[o.image() for o in outputs], references=[r.image() for r in references],
                      reference_ids=[f"ref{r.content}-{r.style}-{r.seed}" for r in references], prompts=subjects,
                      contents=[world.caption(world.CONTENTS[r.content], None) for r in references], subjects=subjects)


def test_the_judge_fills_three_columns_with_roles_and_says_it_is_the_toys(judge):
    assert judge.columns == ("judge_style", "judge_shape", "judge_leak")
    assert {c: str(r) for c, r in judge.roles().items()} == {
        "judge_style": "style:higher", "judge_shape": "text:higher", "judge_leak": "leakage:lower"}
    assert judge.describe_model() == JUDGE_MODEL and JUDGE_MODEL.startswith(validity.JUDGE_LABEL)
    assert judge.describe_model().endswith("(findings about the toy, not about SDXL)")
    assert judge.identity()["scorer"] == "toy_judge" and judge.identity()["weights"] == "toy"
    renamed, = build_scorers({"j": {"scorer": "toy_judge", "shape_column": "s", "leak_column": "l"}}, "cpu", "toy")
    assert renamed.columns == ("j", "s", "l") and str(renamed.roles()["l"]) == "leakage:lower"


def test_the_judge_reads_toy_images_whose_shape_and_style_are_known(judge):
    """64 outputs drawn in their reference's style, each with the prompted shape: ~all judged so; then the same cells
    drawn with the reference's shape instead: judge_leak = 1 (and judge_shape = 0) wherever the shapes differ."""
    references = world.samples(64, 11)
    prompted = [int(c) for c in np.random.default_rng(3).integers(0, len(world.CONTENTS), 64)]
    followed = [world.ToySample(c, r.style, 1000 + i) for i, (c, r) in enumerate(zip(prompted, references))]
    values = judge.score(_batch(followed, references, prompted))
    differ = np.array([c != r.content for c, r in zip(prompted, references)])
    assert differ.any() and (~differ).any()  # both kinds of cell occur
    assert values["judge_style"].mean() >= 0.97 and values["judge_shape"].mean() >= 0.95
    assert np.isnan(values["judge_leak"][~differ]).all() and np.nanmean(values["judge_leak"]) <= 0.05

    leaked = [world.ToySample(r.content, r.style, 2000 + i) for i, r in enumerate(references)]
    values = judge.score(_batch(leaked, references, prompted))
    assert values["judge_style"].mean() >= 0.97
    assert values["judge_leak"][differ].mean() >= 0.95 and values["judge_shape"][differ].mean() <= 0.05
    assert np.isnan(values["judge_leak"][~differ]).all() and values["judge_shape"][~differ].mean() >= 0.95

    other_style = [world.ToySample(c, (r.style + 1) % len(world.STYLES), 3000 + i)
                   for i, (c, r) in enumerate(zip(prompted, references))]
    assert judge.score(_batch(other_style, references, prompted))["judge_style"].mean() <= 0.05


def test_a_prompt_that_names_no_toy_shape_leaves_shape_and_leak_empty(judge, caplog):
    refs = world.samples(2, 5)
    batch = _batch(refs, refs, [0, 0])
    batch.subjects = ["a cat", "a cat"]
    with caplog.at_level("WARNING", logger="styleprobe"):
        values = judge.score(batch)
    assert np.isnan(values["judge_shape"]).all() and np.isnan(values["judge_leak"]).all()
    assert values["judge_style"].tolist() == [1.0, 1.0]
    assert "2 of 2 prompts name no toy shape (e.g. 'a cat'), so judge_shape and judge_leak stay empty" in caplog.text


@pytest.mark.parametrize("weights", ["tiny", "hub", "random"])
def test_the_judge_refuses_weights_other_than_the_toys(weights):
    with pytest.raises(ConfigError, match=rf"^metrics.judge_style: the toy_judge scorer reads toy-world images only, "
                                          rf"and these are scored with '{weights}' weights; score model=toy's results"):
        build_scorers(JUDGE, "cpu", weights)


def test_a_tiny_sweep_with_the_judge_is_refused_at_planning_before_any_model_loads(tmp_path):
    from styleprobe.metrics.base import LOAD_COUNT
    from styleprobe.run.sweep import prepare

    cfg, loads = _compose(tmp_path, "model=tiny", "metrics=toy", "data=small"), LOAD_COUNT["n"]
    with pytest.raises(ConfigError, match=r"metrics.judge_style: .*'tiny' weights.*\(metrics=default\)$"):
        prepare(cfg)
    assert LOAD_COUNT["n"] == loads and not list(Path(cfg.results_dir).glob("rows/*"))


# configs -----------------------------------------------------------------------------------------------------------
def test_model_toy_scores_with_the_toy_set_other_models_with_the_default_and_an_explicit_set_wins(tmp_path):
    toy_set = ["style_clip", "style_csd", "text_clip", "leak_clip", "ref_dinov2", "judge_style"]
    default_set = ["style_clip", "style_dino", "style_csd", "text_clip", "leak_clip", "ref_dinov2"]
    assert list(_compose(tmp_path).metrics) == toy_set  # the default model is the toy
    assert list(_compose(tmp_path, "model=toy").metrics) == toy_set
    assert list(_compose(tmp_path, "model=toy", "experiment=benchmark").metrics) == toy_set
    for model in ("tiny", "sdxl"):
        assert list(_compose(tmp_path, f"model={model}").metrics) == default_set
    assert list(_compose(tmp_path, "model=toy", "metrics=default").metrics) == default_set
    assert list(_compose(tmp_path, "model=toy", "metrics=[toy,style_dino]").metrics) == [*toy_set, "style_dino"]
    assert _compose(tmp_path, "model=toy", "metrics=[]").get("metrics") is None


def test_the_toys_analysis_rests_on_the_judge_and_other_models_keep_theirs(tmp_path):
    judge_axes = ("judge_style", "judge_leak", "judge_shape")
    toy = AnalysisSettings.from_config(_compose(tmp_path, "model=toy").analysis)
    assert toy.criterion.metrics == judge_axes
    assert (toy.benchmark.style_metric, toy.benchmark.leak_metric, toy.benchmark.text_metric) == judge_axes
    tiny = AnalysisSettings.from_config(_compose(tmp_path, "model=tiny").analysis)
    assert tiny.criterion.metrics == ("style_csd", "leak_clip", "text_clip") == default_settings().criterion.metrics
    given = AnalysisSettings.from_config(_compose(tmp_path, "model=toy", "analysis.verdict.leak_metric=leak_clip").analysis)
    assert given.criterion.metrics == ("judge_style", "leak_clip", "judge_shape")


def test_styleprobe_analyze_takes_the_metrics_of_the_preset_that_made_the_folder(tmp_path):
    folder = tmp_path / "results"
    for run, model in (("20260101-000000-0-a-1", {"name": "tiny"}),
                       ("20260102-000000-0-a-1", {"name": "toy", "analysis_metrics": {
                           "style": "judge_style", "leak": "judge_leak", "text": "judge_shape"}}),
                       ("20260103-000000-0-a-1", None)):  # a later scoring run saves no model
        (folder / "runs" / run).mkdir(parents=True)
        (folder / "runs" / run / "config.yaml").write_text(json.dumps({"model": model} if model else {"results_dir": "x"}))
    cfg = _compose(tmp_path, f"results_dir={folder}", config="analyze")
    assert AnalysisSettings.from_config(with_preset_metrics(cfg, [folder]).analysis).criterion.metrics == (
        "judge_style", "judge_leak", "judge_shape")
    assert AnalysisSettings.from_config(cfg.analysis).criterion.metrics == ("style_csd", "leak_clip", "text_clip")
    given = _compose(tmp_path, f"results_dir={folder}", "analysis.verdict.style_metric=style_csd", config="analyze")
    assert AnalysisSettings.from_config(with_preset_metrics(given, [folder]).analysis).criterion.style_metric == "style_csd"
    assert with_preset_metrics(cfg, [tmp_path / "elsewhere"]) is cfg  # no sweep config: the defaults


# the validity table ------------------------------------------------------------------------------------------------
def test_auc_is_mann_whitney_u_over_the_pairs_ties_counting_half():
    from scipy.stats import mannwhitneyu

    pos, neg = [0.9, 0.5, 0.5, 0.2], [0.5, 0.1, 0.3]
    # by hand: 0.9 beats all 3; each 0.5 beats 0.1 and 0.3 and ties 0.5 (2.5 each); 0.2 beats 0.1 -> 3+2.5+2.5+1 = 9
    assert validity.auc(pos, neg) == pytest.approx(9 / 12)
    assert validity.auc(pos, neg) == pytest.approx(mannwhitneyu(pos, neg).statistic / 12)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(0, 6, 30).astype(float)  # many ties
    assert validity.auc(a, b) == pytest.approx(mannwhitneyu(a, b).statistic / (40 * 30))
    assert validity.auc([1, 2], [np.nan, 0]) == 1.0 and np.isnan(validity.auc([], [1.0]))


def test_each_metric_is_read_so_that_higher_means_more_of_what_it_measures():
    assert validity.orientation(MetricRole("leakage")) == (1, "higher = more leakage")
    assert validity.orientation(MetricRole("leakage", "higher")) == (-1, "lower = more leakage (flipped)")
    assert validity.orientation(MetricRole("style"))[0] == validity.orientation(MetricRole("reference"))[0] == 1


JUDGE_MODEL = "toy-world judge CNN, shape and style classes (findings about the toy, not about SDXL)"
CLIP_MODEL = "toy-world open_clip (findings about the toy, not about SDXL)"
CSD_MODEL = "toy-world CSD (findings about the toy, not about SDXL)"


def _judged_folder(root: Path, seed: int = 0, judged: bool = True) -> Path:
    """A toy results folder as a sweep writes it, 4 references x 4 prompts x none/all/style/style_layout, with judge
    labels (unless not `judged`) and scorer columns that follow them: style_csd tracks judge_style, leak_clip judge_leak
    (leak_free the other way round), text_clip is noise."""
    from styleprobe.models.layers import PRESETS

    modules = ["down_blocks.1.attentions.0", "down_blocks.2.attentions.1", "up_blocks.0.attentions.1"]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    store = Store(root)
    rows, labels, clip, csd = [], [], [], []
    style_rate = {"none": 0.1, "all": 1.0, "style": 0.9, "style_layout": 0.95}
    leak_rate = {"none": 0.0, "all": 0.6, "style": 0.1, "style_layout": 0.3}
    for r in range(4):
        Image.new("RGB", (8, 8), (60 * r, 90, 30)).save(source := root / f"source{r}.png")
        store.save_reference(source, f"digest{r}")
        for p in range(4):
            for name in style_rate:
                key = f"k{r}-{p}-{name}"
                layers = modules if name == "all" else list(PRESETS.get(name) or [])
                Image.new("RGB", (8, 8), (10 * r, 10 * p, 5)).save(root / f"{key}.png")
                rows.append({"key": key, "image_path": f"{key}.png", "injection": name, "sweep": "preset", "target": "",
                             "layers": json.dumps(layers), "layer_scales": json.dumps(dict.fromkeys(layers, 1.0)),
                             "model": "toy", "method": "ip_adapter", "scale": 1.0, "subtraction": 0.0, "steps": 20,
                             "guidance": 5.0, "scheduler": "default", "height": 64, "width": 64, "style": f"style{r}",
                             "content": f"a {world.CONTENTS[r]}", "prompt": f"a {world.CONTENTS[(r + p) % 8]}",
                             "seed": 0, "reference_digest": f"digest{r}"})
                style = float(rng.random() < style_rate[name])
                leak = np.nan if p == 0 else float(rng.random() < leak_rate[name])  # p = 0: the reference's own shape
                labels.append({"key": key, "judge_style": style, "judge_shape": float(rng.random() < 0.5),
                               "judge_leak": leak, "judge_style_model": JUDGE_MODEL})
                leak_value = 0.2 + 0.3 * (0 if np.isnan(leak) else leak) + rng.normal(0, 0.02)
                clip.append({"key": key, "leak_clip": leak_value, "leak_margin": leak_value - 0.3,
                             "leak_free": float(leak_value < 0.35), "text_clip": rng.normal(0.3, 0.02),
                             "leak_clip_model": CLIP_MODEL})
                csd.append({"key": key, "style_csd": 0.2 + 0.6 * style + rng.normal(0, 0.02), "style_csd_model": CSD_MODEL})
    store.write_rows(rows, "run-a", 0)
    text = [{"key": c["key"], "text_clip": c.pop("text_clip"), "text_clip_model": CLIP_MODEL} for c in clip]
    for metric, frame, scorer in (("judge_style", labels, "toy_judge"), ("leak_clip", clip, "leak_clip"),
                                  ("text_clip", text, "text_clip"), ("style_csd", csd, "style_csd"))[0 if judged else 1:]:
        store.write_metric_identity(metric, {"scorer": scorer, "model": frame[0][f"{metric}_model"], "options": {}})
        store.write_scores(metric, pd.DataFrame(frame), "run-a", 0)
    return root


def test_the_validity_table_measures_each_scorer_metric_against_each_judge_column(tmp_path):
    table = load_results(_judged_folder(tmp_path / "toy"))
    assert validity.judge_columns(table) == ["judge_style", "judge_shape", "judge_leak"]
    assert metric_role(table, "judge_leak") == MetricRole("leakage")
    frame = validity.validity(table).set_index(["judge_column", "metric"])
    assert set(frame.index.get_level_values("metric")) == {"leak_clip", "leak_margin", "leak_free", "text_clip", "style_csd"}
    assert frame.loc[("judge_style", "style_csd"), "auc"] == 1.0 and frame.loc[("judge_style", "style_csd"), "matched"]
    assert frame.loc[("judge_leak", "leak_clip"), "auc"] == 1.0 and frame.loc[("judge_leak", "leak_margin"), "auc"] == 1.0
    assert frame.loc[("judge_leak", "leak_free"), "auc"] > 0.9  # flipped: fewer leak-free images among the leaks
    assert frame.loc[("judge_leak", "leak_free"), "orientation"] == "lower = more leakage (flipped)"
    assert 0.3 < frame.loc[("judge_shape", "text_clip"), "auc"] < 0.7  # noise
    leaks = table["judge_leak"]
    row = frame.loc[("judge_leak", "leak_clip")]
    assert (row["n_pos"], row["n_neg"]) == (int((leaks == 1).sum()), int((leaks == 0).sum()))
    assert row["n_pos"] + row["n_neg"] == 4 * 3 * 4  # the cells of the reference's own shape have no leak label
    assert validity.validity(load_results(_judged_folder(tmp_path / "plain", judged=False))).empty


def test_the_report_of_a_judged_folder_has_the_validity_section_and_its_table(tmp_path):
    """The probe report, its verdict on the judge's rates, and the benchmark report of the same folder."""
    root = _judged_folder(tmp_path / "toy")
    fast = {"bootstrap.n_boot": 200, "formats": ["png"], "verdict.style_metric": "judge_style",
            "verdict.leak_metric": "judge_leak", "verdict.text_metric": "judge_shape"}
    report = analyze(root, default_settings(**fast, kind="probe"))
    text = report.path.read_text()
    assert "## Metric validity (toy judge)" in text
    section = text.split("## Metric validity (toy judge)")[1].split("\n## ")[0]
    assert "| `style_csd` | style similarity to the reference, higher is better | higher = more style | **1.000** (" in section
    assert "`judge_leak` AUC (n+/n-)" in section and "lower = more leakage (flipped)" in section
    assert text.index("## Metric validity") < text.index("## Figures")
    csv = pd.read_csv(report.out_dir / "tables" / "metric_validity.csv")
    assert list(csv.columns) == list(validity.COLUMNS) and len(csv) == 3 * 5
    assert "- [metric_validity.csv](tables/metric_validity.csv)" in text
    style = next(v for v in report.verdicts if v.candidate == "style")
    assert [c.metric for c in style.checks] == ["judge_style", "judge_leak", "judge_shape"]
    assert all(np.isfinite(c.estimate) for c in style.checks)  # rates, with the reference's own shape left out of leak

    bench = analyze(root, default_settings(**{**fast, "kind": "benchmark", "benchmark.style_metric": "judge_style"}),
                    out_dir=tmp_path / "bench")
    assert "## Metric validity (toy judge)" in bench.path.read_text()
    assert (tmp_path / "bench" / "tables" / "metric_validity.csv").is_file()


def test_a_report_without_judge_columns_has_no_validity_section(tmp_path):
    root = _judged_folder(tmp_path / "toy", judged=False)
    report = analyze(root, default_settings(**{"bootstrap.n_boot": 100, "formats": ["png"]}, kind="probe"))
    assert "Metric validity" not in report.path.read_text()
    assert "metric_validity.csv" not in {p.name for p in report.tables}


# a toy sweep -------------------------------------------------------------------------------------------------------
def test_a_small_toy_sweep_fills_the_judge_columns(tmp_path):
    """model=toy's own metric set on a few toy references and shape prompts: every row judged, 0 or 1 (leak empty
    exactly where the reference shows the prompted shape), and the validity table built from it."""
    from styleprobe.run.sweep import run

    refs = tmp_path / "refs"
    refs.mkdir()
    lines = ["image,style,content"]
    for i, (content, style) in enumerate([(3, 0), (5, 2)]):  # a star in hatched ink, a heart in pastel flat
        world.render(content, style, 7_100_000 + i).save(refs / f"{i}.png")
        lines.append(f"{i}.png,{world.STYLES[style]},{world.caption(world.CONTENTS[content], None)}")
    (refs / "manifest.csv").write_text("\n".join(lines) + "\n")
    cfg = _compose(tmp_path, "model=toy", "data=small", "sampler.steps=2", "experiment=custom", "injection=presets",
                   "analyze=false", f"data.style_set={refs}", "data.prompts=[a star,a circle]")
    assert "judge_style" in cfg.metrics and "style_dino" not in cfg.metrics
    run(cfg)
    table = load_results(cfg.results_dir)
    assert len(table) == 2 * 2 * 4
    assert table.judge_style.isin([0, 1]).all() and table.judge_shape.isin([0, 1]).all()
    same = table.content == table.prompt  # the star reference under the prompt "a star"
    assert same.sum() == 4 and table.judge_leak[same].isna().all() and table.judge_leak[~same].isin([0, 1]).all()
    assert table.judge_style_model.str.startswith(validity.JUDGE_LABEL).all()
    frame = validity.validity(table)
    assert set(frame.metric) == {"style_clip", "style_csd", "text_clip", "leak_clip", "leak_margin", "leak_free", "ref_dinov2"}
