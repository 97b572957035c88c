"""The analysis end to end on tiny sweeps: the report a sweep ends with, `styleprobe analyze`, the notebooks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir
from PIL import Image

from styleprobe.analysis import analyze, default_settings, figures, load_results
from styleprobe.config import CONFIG_DIR
from styleprobe.errors import AnalysisError
from styleprobe.run.sweep import prepare, run

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
METRICS = "metrics=[style_csd,leak_clip,text_clip]"


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={root}", "data=small", "sampler.steps=2", *overrides]))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, tiny_model):
    """Four tiny sweeps (2 references x 2 prompts): module probe (analysed by the sweep), layer probe, subtraction, and a
    time probe (none, all, style x the full window and two halves)."""
    root = tmp_path_factory.mktemp("analysis")
    module = run(_cfg(root, METRICS))
    layers = run(_cfg(root, METRICS, "experiment=layer_probe_layers", "analyze=false"))
    sub = run(_cfg(root, METRICS, "experiment=subtraction", "method.ip_adapter.subtraction=[0.0,1.0]", "analyze=false"))
    time = run(_cfg(root, METRICS, "experiment=time_probe", "injection.patterns=[none,all,style]", "analyze=false",
                    "injection.windows=[full,one_hot:window:2]"))
    return {"module": module, "layers": layers, "subtraction": sub, "time": time}


def test_sweep_ends_with_the_report(sweeps):
    result = sweeps["module"]
    out = result.results_dir / "analysis"
    assert result.report is not None and result.report.path == out / "report.md"
    text = (out / "report.md").read_text()
    assert "Machinery check, not science" in text
    assert "lower CI bound >= 0.8" in text and "upper CI bound < 0" in text and "lower CI bound > 0" in text
    assert "| `style` | `one_hot:up_blocks.0.attentions.1` |" in text and "| `style_layout` | `style_layout` |" in text
    assert "Design: 2 style references x 2 prompts: 4 cells (the full cross); 1 seed each" in text
    assert "**Only 2 style references**: intervals over references are rough" in text
    assert "`analysis.bootstrap.scheme=two_way`" in text
    # none beside the candidates, and the decisions counted
    assert "| `none` | `none` | - |" in text and "| baseline, not a candidate |" in text
    assert "Read criteria 2 and 3 beside `none`" in text
    assert "Decisions: 2 verdicts (candidates x settings)" in text and "at most 5.0% (Bonferroni)" in text
    assert "Intervals are simultaneous over the 11 targets ranked (max-statistic bootstrap" in text
    assert "### one_hot_module" in text and "★ style" in text
    for name in ("module_bars", "tradeoffs", "grid_styles", "grid_prompts"):
        for suffix in (".png", ".pdf"):
            path = out / "figures" / f"{name}{suffix}"
            assert path.stat().st_size > 1000, path
            assert f"figures/{name}.png" in text
    with Image.open(out / "figures" / "grid_styles.png") as im:
        assert im.size[0] == int(figures.WIDTH * 200)
    assert not [p for p in result.results_dir.iterdir() if p.name.startswith(".")]


def test_report_tables_match_a_hand_computation(sweeps):
    root = sweeps["module"].results_dir
    aggregate = pd.read_csv(root / "analysis" / "tables" / "aggregate.csv")
    assert set(aggregate.metric) == {"style_csd", "leak_clip", "leak_margin", "leak_free", "text_clip"}
    assert len(aggregate[aggregate.metric == "style_csd"]) == 14  # 11 modules + none + all + style_layout
    table = load_results(root)
    hand = table[table.injection == "all"].groupby(["reference_digest", "prompt", "seed"])["style_csd"].mean().mean()
    row = aggregate[(aggregate.metric == "style_csd") & (aggregate.injection == "all")].iloc[0]
    assert row["mean"] == pytest.approx(hand, abs=1e-12) and row["n_units"] == 4
    assert row["low"] <= row["mean"] <= row["high"]
    paired = pd.read_csv(root / "analysis" / "tables" / "paired_vs_none.csv")
    unit = ["reference_digest", "prompt", "seed"]
    a = table[table.injection == "all"].set_index(unit)["text_clip"]
    b = table[table.injection == "none"].set_index(unit)["text_clip"]
    got = paired[(paired.metric == "text_clip") & (paired.injection == "all")].iloc[0]
    assert got["mean_diff"] == pytest.approx((a - b).mean(), abs=1e-12)
    verdict = pd.read_csv(root / "analysis" / "tables" / "verdict.csv")
    assert set(verdict.candidate) == {"style", "style_layout"} and set(verdict.criterion) == {
        "style kept", "leakage lower", "text followed better"}


def test_a_failed_analysis_keeps_the_previous_report(sweeps, tmp_path, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(sweeps["module"].results_dir, root)
    before = (root / "analysis" / "report.md").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while drawing")

    monkeypatch.setattr(figures, "image_grid", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        analyze(root, default_settings())
    assert (root / "analysis" / "report.md").read_text() == before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    report = analyze(root, default_settings(**{"verdict.style_fraction": 0.5}))
    assert "lower CI bound >= 0.5" in report.path.read_text()


def test_layer_and_subtraction_sweeps_get_their_figures(sweeps, tmp_path):
    report = analyze(sweeps["layers"].results_dir, default_settings(), out_dir=tmp_path / "layers")
    names = {p.name for p in report.figures}
    assert {"layer_heatmap.png", "layer_heatmap.pdf"} <= names and "module_bars.png" not in names
    assert "### one_hot_layer" in report.path.read_text()
    both = analyze([sweeps["module"].results_dir, sweeps["subtraction"].results_dir], default_settings(),
                   out_dir=tmp_path / "both")
    text = both.path.read_text()
    assert "subtraction_curves.png" in {p.name for p in both.figures}
    assert str(sweeps["subtraction"].results_dir) in text and "subtraction" in text
    assert "(subtraction=1.0)" in text  # one verdict per strength


def test_clear_errors(sweeps, tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        analyze(tmp_path / "nowhere", default_settings())
    with pytest.raises(AnalysisError, match="give out_dir"):
        analyze([sweeps["module"].results_dir, sweeps["layers"].results_dir], default_settings())
    with pytest.raises(AnalysisError, match=r"needs style_dino.*analysis.verdict.style_metric=<column>"):
        analyze(sweeps["module"].results_dir, default_settings(**{"verdict.style_metric": "style_dino"}), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(AnalysisError, match="bootstrap level=2"):
        default_settings(**{"bootstrap.level": 2})
    # A sweep whose metrics cannot feed the report fails before any model loads or anything is written.
    with pytest.raises(AnalysisError, match=r"needs style_csd, leak_clip, text_clip.*metrics=\[default"):
        prepare(_cfg(tmp_path, "metrics=[style_clip]"))
    assert not (tmp_path / "tiny").exists()


@pytest.mark.slow
def test_analyze_command_from_the_shell(sweeps, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(sweeps["module"].results_dir, root)
    shutil.rmtree(root / "analysis")
    cmd = [sys.executable, "-m", "styleprobe.cli", "analyze", f"results_dir={root}", "analysis.verdict.style_fraction=0.6"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lower CI bound >= 0.6" in proc.stdout and "verdict style_layout: " in proc.stdout
    assert str(root / "analysis" / "report.md") in proc.stdout and (root / "analysis" / "report.md").exists()
    bad = subprocess.run([*cmd[:4], f"results_dir={tmp_path / 'nope'}"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
    missing = subprocess.run(cmd[:4], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "give results_dir=<folder>" in missing.stderr


def _code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_notebooks_are_stored_without_outputs_and_stay_thin():
    books = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.stem for p in books} == {"module_probe", "layer_probe", "subtraction", "verdict", "benchmark", "time_probe"}
    for path in books:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name
                for word in ("def ", "class ", "for ", "while ", "lambda", "groupby", "np.", "plt."):
                    assert word not in cell.source, f"{path.name}: analysis logic belongs in styleprobe.analysis ({word!r})"


@pytest.mark.parametrize(
    "name, sweep, figures_expected",
    [("module_probe", "module", 4), ("layer_probe", "layers", 1), ("subtraction", "subtraction", 2), ("verdict", "module", 0),
     ("time_probe", "time", 2)],
)
def test_notebooks_run_on_a_tiny_sweep(sweeps, name, sweep, figures_expected, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    monkeypatch.setenv("STYLEPROBE_RESULTS_DIR", str(sweeps[sweep].results_dir))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == figures_expected
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(sweeps[sweep].results_dir) in printed
    if name == "verdict":
        assert "lower CI bound >= 0.8" in printed and ("YES" in printed or "NO" in printed)


# Reports of synthetic results folders: no model, no scoring; a few hundred bootstrap replicates -------------------
FAST = {"bootstrap.n_boot": 200}
TOY = {"style_csd": "toy-world CSD (findings about the toy, not about SDXL)",
       "leak_clip": "toy-world open_clip (findings about the toy, not about SDXL)",
       "text_clip": "toy-world open_clip (findings about the toy, not about SDXL)"}
MODULES = ["down_blocks.1.attentions.0", "down_blocks.2.attentions.1", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0"]


def _condition(name: str) -> dict:
    """The row columns that say what a condition injects: presets by name, `one_hot:<module>` as the module sweep."""
    import json

    from styleprobe.models.layers import PRESETS

    if name.startswith("one_hot:"):
        target = name.split(":", 1)[1]
        layers, sweep = [target], "one_hot_module"
    else:
        layers = MODULES if name == "all" else list(PRESETS.get(name) or [])
        sweep, target = "preset", ""
    return {"injection": name, "sweep": sweep, "target": target, "layers": json.dumps(layers),
            "layer_scales": json.dumps({m: 1.0 for m in layers})}


def _folder(root: Path, means: dict[str, dict[str, float]], n_refs: int = 3, n_prompts: int = 3, content: str = "",
            spread: dict[int, float] | None = None, seed: int = 0) -> Path:
    """A results folder as a sweep writes it (rows, 16 px images, references, scores) for the conditions of `means`
    (injection -> metric -> mean; a metric left out of a condition is unscored there). `spread[r]` multiplies
    reference r's effects (each condition's distance from `none`)."""
    import numpy as np

    from styleprobe.run.store import Store

    root.mkdir(parents=True)
    store, rng = Store(root), np.random.default_rng(seed)
    rows, scores = [], {m: [] for m in TOY}
    for r in range(n_refs):
        ref = root / f"source{r}.png"
        Image.new("RGB", (16, 16), (40 * r, 90, 200 - 40 * r)).save(ref)
        store.save_reference(ref, f"digest{r}")
        for p in range(n_prompts):
            offset = rng.normal(0, 0.03)
            for i, (name, values) in enumerate(means.items()):
                key = f"k{r}-{p}-{i}"
                rows.append({"key": key, **_condition(name), "model": "toy", "method": "ip_adapter",
                             "style": f"style{r}", "content": content, "prompt": f"prompt {p}", "seed": 0,
                             "reference_digest": f"digest{r}"})
                Image.new("RGB", (16, 16), (20 * i, 10 * r, 30 * p)).save(path := root / f"{key}.png")
                rows[-1]["image_path"] = path.name
                for metric, mean in values.items():
                    base = means.get("none", values).get(metric, mean)
                    value = base + (mean - base) * (spread or {}).get(r, 1.0) + offset + rng.normal(0, 0.005)
                    scores[metric].append({"key": key, metric: value, f"{metric}_model": TOY[metric]})
    store.write_rows(rows, "run-a", 0)
    for metric, frame in scores.items():
        store.write_metric_identity(metric, {"scorer": metric, "model": TOY[metric]})
        frame = frame or [{"key": rows[0]["key"], metric: float("nan"), f"{metric}_model": TOY[metric]}]
        store.write_scores(metric, pd.DataFrame(frame), "run-a", 0)
    return root


def test_a_sweep_of_all_alone_gets_a_report_that_says_what_to_add(tmp_path):
    """The new user's custom sweep: one pattern (`all`), references without content labels (no leakage scores)."""
    root = _folder(tmp_path / "custom", {"all": {"style_csd": 0.6, "text_clip": 0.25}})
    report = analyze(root, default_settings(**FAST))
    text = report.path.read_text()
    assert "Not judged: add `none` to the sweep (`injection.patterns=[none,all]`) to get the verdict" in text
    assert "paired_vs_none: add `none` to the sweep (`injection.patterns=[none,all]`) to get `tables/paired_vs_none.csv`" in text
    assert "Means, not effects: add `none` to the sweep" in text
    assert "leak_clip (toy-world open_clip (findings about the toy, not about SDXL)): **no row has a score**" in text
    assert "no style reference has a content label" in text
    assert {p.name for p in report.tables} == {"aggregate.csv", "paired_vs_all.csv"}
    assert {"tradeoffs.png", "grid_styles.png", "grid_prompts.png"} <= {p.name for p in report.figures}
    assert "add `none`, `style` and `style_layout` to the sweep (`injection.patterns=[none,style,style_layout,all]`)" in text
    aggregate = pd.read_csv(root / "analysis" / "tables" / "aggregate.csv")
    assert set(aggregate.metric) == {"style_csd", "text_clip"}


def test_a_sweep_without_none_or_all_gets_its_aggregates_and_figures(tmp_path):
    """InstantStyle's images on one's own references: the presets alone, no baseline, no reference condition."""
    root = _folder(tmp_path / "mine", {"style": {"style_csd": 0.6, "leak_clip": 0.2, "text_clip": 0.3},
                                       "style_layout": {"style_csd": 0.65, "leak_clip": 0.25, "text_clip": 0.28}},
                   content="a rabbit")
    report = analyze(root, default_settings(**FAST))
    text = report.path.read_text()
    assert "Not judged: add `none` and `all` to the sweep (`injection.patterns=[none,all,style,style_layout]`)" in text
    assert "paired_vs_all: add `all`" in text and "paired_vs_none: add `none`" in text
    assert [p.name for p in report.tables] == ["aggregate.csv"]
    assert {"tradeoffs.png", "grid_styles.png", "grid_prompts.png"} <= {p.name for p in report.figures}
    assert "Rows: `style`, `style_layout`." in text and "no row has a score" not in text
    assert "skipped" not in text


def test_a_module_probe_without_none_says_what_its_ranking_and_bars_need(tmp_path):
    means = {"all": {"style_csd": 0.6, "leak_clip": 0.3, "text_clip": 0.2},
             **{f"one_hot:{m}": {"style_csd": 0.4, "leak_clip": 0.25, "text_clip": 0.25} for m in MODULES}}
    text = analyze(_folder(tmp_path / "probe", means, content="a rabbit"), default_settings(**FAST)).path.read_text()
    assert "- one_hot_module: add `none` to the sweep (`injection.patterns=[none,all,one_hot:module]`) to get the ranking" in text
    assert "- module bars: add `none` to the sweep" in text and "the module bars (effects against `none`)" in text


def test_planning_refuses_an_analysis_setting_the_sweep_cannot_feed(tmp_path, tiny_model):
    cfg = lambda *o: _cfg(tmp_path, METRICS, "experiment=custom", *o)  # noqa: E731
    with pytest.raises(AnalysisError, match=r"analysis.verdict.reference names style, which this sweep .* will not have "
                                            r"\(its patterns: all\); add style to injection.patterns"):
        prepare(cfg("injection=all", "analysis.verdict.reference=style"))
    with pytest.raises(AnalysisError, match=r"analysis.verdict.candidates names style_layout.*its patterns: all, none, style"):
        prepare(cfg("injection.patterns=[none,all,style]", "analysis.verdict.candidates=[style,style_layout]",
                    "analysis.verdict.style_fraction=0.5", "analysis.verdict.candidates=[style_layout]"))
    with pytest.raises(AnalysisError, match=r"analysis.grid.rows names one_hot:mid_block.attentions.0"):
        prepare(cfg("injection=all", "analysis.grid.rows=[all,one_hot:mid_block.attentions.0]"))
    assert not (tmp_path / "tiny").exists()
    # the defaults name none, all and the presets, but a sweep without them still plans (its report says what to add);
    # a candidate found by its layers (`style` = the module probe's one_hot:up_blocks.0.attentions.1) counts
    assert prepare(cfg("injection=all")).analysis is not None
    assert prepare(cfg("injection.patterns=[none,all,one_hot:module]", "analysis.verdict.candidates=[style]")).analysis


def test_the_grid_shows_the_top_targets_and_holds_the_reference_that_differs_most(tmp_path):
    """Reference 2's images move most from `none`; the ranking's top targets become rows, each with its rank."""
    means = {"none": {"style_csd": 0.3, "leak_clip": 0.2, "text_clip": 0.3},
             "all": {"style_csd": 0.7, "leak_clip": 0.4, "text_clip": 0.2},
             **{f"one_hot:{m}": {"style_csd": 0.3 + 0.1 * i, "leak_clip": 0.2, "text_clip": 0.3} for i, m in enumerate(MODULES)}}
    root = _folder(tmp_path / "probe", means, n_refs=8, n_prompts=2, content="a rabbit", spread={2: 3.0, 0: 0.2})
    report = analyze(root, default_settings(**FAST, **{"grid.max_columns": 6, "grid.top_targets": 2}))
    text = report.path.read_text()
    grid = next(line for line in text.splitlines() if line.startswith("- Rows:") and "Held: reference" in line)
    # `style` is the module probe's #2 (found by its layers), then #1
    assert "Rows: `none`, `all`, `one_hot:up_blocks.0.attentions.1`, `one_hot:up_blocks.1.attentions.0`." in grid
    assert "Held: reference style2, seed 0 (its images differ most from `none`" in grid
    styles = next(line for line in text.splitlines() if line.startswith("- Rows:") and "Held: prompt" in line)
    assert "Shows 6 of 8 styles; leaves out `style6`, `style7`." in styles
    choice = figures.choose_grid(load_results(root), ["none", "all", "style"], "style", 6, metric="style_csd",
                                 labels={"one_hot:up_blocks.0.attentions.1": "#2 up_blocks.0.attentions.1"})
    assert choice.rows[2] == ("style\n(= up_blocks.0.attentions.1)\n#2", "one_hot:up_blocks.0.attentions.1")
    assert "Labelled: the presets, InstantStyle's modules and the top-ranked targets" in text


from matplotlib.text import Text  # noqa: E402


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_tradeoff_labels_name_the_top_targets_and_never_overlap(tmp_path):
    """Twelve labelled points in a clump: every label is drawn, and no two label boxes share a pixel."""
    modules = [f"up_blocks.{b}.attentions.{a}" for b in range(4) for a in range(3)]
    means = {"none": {"style_csd": 0.3, "leak_clip": 0.2, "text_clip": 0.3},
             "all": {"style_csd": 0.31, "leak_clip": 0.21, "text_clip": 0.29},
             **{f"one_hot:{m}": {"style_csd": 0.3 + 0.0005 * i, "leak_clip": 0.2 + 0.0004 * i, "text_clip": 0.3}
                for i, m in enumerate(modules)}}
    root = _folder(tmp_path / "clump", means, n_refs=2, n_prompts=2, content="a rabbit")
    table = load_results(root)
    labels = {f"one_hot:{m}": f"#{i + 1} {m}" for i, m in enumerate(modules)}
    fig = figures.tradeoff_scatter(table, "style_csd", ["text_clip", "leak_clip"], "none",
                                   figures.Bootstrap(n_boot=100), labels=labels)
    figures.save(fig, tmp_path, "clump", ["png"])  # what the report writes: the layout must not move the labels
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = [t for t in ax.texts if t.get_text()]
        assert {t.get_text() for t in texts} >= {*labels.values(), "all"}
        boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text's own box, not its leader line
        clashes = [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes)) for j in range(i)
                   if _boxes_overlap(boxes[i], boxes[j])]
        assert not clashes


def test_axes_say_what_the_number_is_and_the_toy_disclaimer_is_said_once(tmp_path):
    root = _folder(tmp_path / "toy", {"none": {"style_csd": 0.3, "leak_clip": 0.2, "text_clip": 0.3},
                                      "all": {"style_csd": 0.7, "leak_clip": 0.4, "text_clip": 0.2}}, content="a rabbit")
    fig = figures.tradeoff_scatter(load_results(root), "style_csd", ["text_clip", "leak_clip"], "none",
                                   figures.Bootstrap(n_boot=100))
    labels = [" ".join(t.split()) for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel())]
    assert labels[:2] == ["Δ vs none: style_csd (cosine; toy-world CSD)", "Δ vs none: text_clip (cosine; toy-world open_clip)"]
    assert not [label for label in labels if "findings about the toy" in label]
    assert fig._suptitle.get_text().count("findings about the toy, not about SDXL") == 1
    from styleprobe.analysis.load import axis_label

    rates = pd.DataFrame({"hit": [0.0, 1.0, 1.0], "hit_model": ["judge"] * 3, "leak_free": [1.0, 0, 1], "leak_free_model": "m"})
    assert axis_label(rates, "hit") == "hit (rate: share of images; judge)"
    assert axis_label(rates, "leak_free") == "leak_free (rate: share of images; m)"


def test_paired_differences_against_an_unscored_condition_give_no_rows():
    from styleprobe.analysis import paired_differences

    table = pd.DataFrame({"injection": ["all", "style"] * 2, "reference_digest": ["a", "a", "b", "b"],
                          "prompt": "p", "seed": 0, "m": [float("nan"), 0.5, float("nan"), 0.4], "m_model": "x"})
    assert paired_differences(table, "m", {"injection": "all"}, ["injection"]).empty
    with pytest.raises(AnalysisError, match="no rows with injection=none"):
        paired_differences(table, "m", {"injection": "none"}, ["injection"])
