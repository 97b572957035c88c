"""The analysis end to end on tiny sweeps: the report a sweep ends with, `styleprobe analyze`, the notebooks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from conftest import on_tiny
from styleprobe.analysis import analyze, default_settings, figures, load_results
from styleprobe.config import CONFIG_DIR
from styleprobe.errors import AnalysisError
from styleprobe.sweep import prepare, run

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
METRICS = "metrics=[style_csd,leak_clip,text_clip]"


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={root}", "data=small", "sampler.steps=2", *overrides]))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, tiny_model):
    """Three tiny sweeps (2 references x 2 prompts): module probe (analysed by the sweep), layer probe, subtraction."""
    root = tmp_path_factory.mktemp("analysis")
    module = run(_cfg(root, METRICS))
    layers = run(_cfg(root, METRICS, "experiment=layer_probe_layers", "analyze=false"))
    sub = run(_cfg(root, METRICS, "experiment=subtraction", "method.ip_adapter.subtraction=[0.0,1.0]", "analyze=false"))
    return {"module": module, "layers": layers, "subtraction": sub}


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
    assert {p.stem for p in books} == {"module_probe", "layer_probe", "subtraction", "verdict", "benchmark"}
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
    [("module_probe", "module", 4), ("layer_probe", "layers", 1), ("subtraction", "subtraction", 2), ("verdict", "module", 0)],
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
