"""What a report says its intervals speak for: sets, cells as they are, unscored rows, the scheme, decisions."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import yaml

from styleprobe.analysis.design import describe_design
from styleprobe.analysis.stats import Bootstrap


def _rows(refs: int, prompts: int, seeds: int, run_id: str = "run-a", folder: str = "") -> pd.DataFrame:
    records = [{"reference_digest": f"d{r}", "style": f"style {r}", "prompt": f"prompt {p}", "seed": s,
                "injection": "all", "m": 0.5, "m_model": "x", "run_id": run_id, "results_dir": folder}
               for r, p, s in itertools.product(range(refs), range(prompts), range(seeds))]
    return pd.DataFrame(records)


def _run(folder, run_id: str, style_set: str, prompts) -> None:
    path = folder / "runs" / run_id / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"data": {"style_set": style_set, "prompts": prompts}}))


def test_an_interrupted_second_seed_is_stated_as_it_is(tmp_path):
    """8 x 8 with a second seed in 2 cells only: 64 cells, 1 to 2 seeds, no invented unit count."""
    _run(tmp_path, "run-a", "builtin:toy", "builtin:toy")
    table = _rows(8, 8, 1, folder=str(tmp_path))
    extra = _rows(1, 2, 2, folder=str(tmp_path))
    table = pd.concat([table, extra[extra.seed == 1]], ignore_index=True)
    text = "\n".join(describe_design(table, Bootstrap()))
    assert "8 style references x 8 prompts: 64 cells (the full cross); 1 to 2 seeds (unequal: an interrupted run?)" in text
    assert "66 units" not in text and "66 images" in text and "reference_digest" not in text
    assert "Style set `builtin:toy` with prompt set `builtin:toy`: 8 style references (style 0, style 1" in text


def test_holes_in_the_cross_unscored_rows_and_few_references_are_named(tmp_path):
    _run(tmp_path, "run-a", "builtin:shapes", ["a cat", "a dog", "a cup"])
    table = _rows(3, 3, 1, folder=str(tmp_path)).iloc[:-1].copy()
    table.loc[0, "m"] = np.nan
    text = "\n".join(describe_design(table, Bootstrap()))
    assert "3 style references x 3 prompts: 8 cells (**1 of the 9 crossed cells are empty**)" in text
    assert "`m` 1 of 8" in text
    assert "**Only 3 style references**: intervals over references are rough" in text
    assert "prompt set `3 prompts given inline`" in text


def test_two_pooled_style_sets_are_named_with_a_warning(tmp_path):
    _run(tmp_path, "run-a", "builtin:toy", "builtin:toy")
    _run(tmp_path, "run-b", "/data/my_styles", "builtin:toy")
    table = pd.concat([_rows(8, 8, 1, "run-a", str(tmp_path)), _rows(2, 8, 1, "run-b", str(tmp_path)).assign(
        reference_digest=lambda f: "mine" + f.reference_digest)], ignore_index=True)
    text = "\n".join(describe_design(table, Bootstrap()))
    assert "Style set `/data/my_styles`" in text and "Style set `builtin:toy`" in text
    assert "**This table pools 2 combinations of style and prompt sets**" in text


def test_one_reference_says_the_intervals_are_one_way_over_prompts(tmp_path):
    text = "\n".join(describe_design(_rows(1, 6, 1), Bootstrap()))
    assert "the two-way bootstrap is the one-way bootstrap over prompts" in text
    one_cell = "\n".join(describe_design(_rows(1, 1, 3), Bootstrap()))
    assert "**One cell**" in one_cell and "3 seeds each" in one_cell
    assert "style set `unknown`".lower() in one_cell.lower()  # rows whose run config is gone
