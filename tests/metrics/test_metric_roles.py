"""One role per metric: what each column measures and which way is better come from its scorer, never its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from styleprobe.analysis import benchmark as bench
from styleprobe.analysis.load import RENAMED, declared_roles, load_results, metric_role
from styleprobe.analysis.report import check_metrics, default_settings
from styleprobe.analysis.stats import Bootstrap
from styleprobe.errors import AnalysisError, ConfigError
from styleprobe.metrics import build_scorers
from styleprobe.metrics.base import MetricRole
from styleprobe.run import scoring
from styleprobe.run.store import Store

OLD_FOLDER = Path(__file__).parents[1] / "fixtures" / "ip_adapter_b5ca8c3" / "results"
BOOT = Bootstrap(n_boot=400, seed=0)


def test_every_shipped_metric_declares_a_role_and_a_direction():
    roles = declared_roles()
    shown = ("style_csd", "text_clip", "leak_clip", "leak_free", "ref_dinov2", "judge_style", "judge_shape", "judge_leak")
    assert {m: str(r) for m, r in roles.items() if m in shown} == {
        "style_csd": "style:higher", "text_clip": "text:higher", "leak_clip": "leakage:lower",
        "leak_free": "leakage:higher", "ref_dinov2": "reference:none",
        "judge_style": "style:higher", "judge_shape": "text:higher", "judge_leak": "leakage:lower",
    }
    assert all(r.role != "unknown" for r in roles.values())
    assert MetricRole.parse("leakage:lower").sign == -1 and MetricRole("reference").sign == 0
    with pytest.raises(ConfigError, match="choose one of style, leakage, text, reference, quality"):
        MetricRole("leak")


def test_a_role_in_the_metric_config_relabels_without_changing_the_identity():
    plain, relabelled = build_scorers(
        {"a": {"scorer": "style_dino", "model": "facebook/dinov2-base"},
         "b": {"scorer": "style_dino", "model": "facebook/dinov2-base", "role": "reference"}}, "cpu", "tiny")
    assert str(plain.roles()["a"]) == "style:higher" and str(relabelled.roles()["b"]) == "reference:none"
    assert plain.identity() == relabelled.identity()  # a role says what a number means, not how it is computed
    with pytest.raises(ConfigError, match="metrics.c: metric direction better='up'"):
        build_scorers({"c": {"scorer": "style_csd", "role": "style", "better": "up"}}, "cpu", "tiny")


def test_a_reference_similarity_is_refused_as_the_leakage_metric_at_planning():
    settings = default_settings(**{"verdict.leak_metric": "ref_dinov2", "kind": "probe"})
    roles = declared_roles()
    with pytest.raises(AnalysisError, match=r"analysis.verdict.leak_metric=ref_dinov2 measures similarity to the reference, "
                                            r"style and content mixed, not content leakage from the reference; set "
                                            r"analysis.verdict.leak_metric to one of judge_leak, leak_clip, leak_margin, leak_free"):
        check_metrics(list(roles), settings, "this sweep", roles)
    check_metrics(list(roles), default_settings(kind="probe"), "this sweep", roles)  # the defaults fit their roles


def test_a_folder_scored_before_the_rename_reads_leak_dino_as_reference_similarity(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(OLD_FOLDER, folder)
    assert Store(folder).metric_roles("leak_dino") is None  # written before roles were recorded
    table = load_results(folder)
    assert "leak_dino" not in table and table["ref_dinov2"].notna().all()
    assert str(metric_role(table, "ref_dinov2")) == "reference:none"
    assert str(metric_role(table, "leak_clip")) == "leakage:lower"  # from the scorer kind of its recorded identity
    assert str(metric_role(table, "style_dino")) == "style:higher"
    assert RENAMED["leak_dino"][0] == "ref_dinov2"


def test_scores_under_an_old_name_are_adopted_not_rescored(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(OLD_FOLDER, folder)
    store = Store(folder)
    before = load_results(folder).set_index("key")["ref_dinov2"]
    scorers = build_scorers({"ref_dinov2": {"scorer": "style_dino", "model": "facebook/dinov2-base", "role": "reference"}},
                            "cpu", "tiny")
    todo = scoring.plan(store, scorers, 8, "tiny")
    assert todo.n_pending == 0  # moved under the new name: nothing to score
    assert "leak_dino" not in store.metrics() and store.metric_roles("ref_dinov2") == {"ref_dinov2": "reference:none"}
    after = load_results(folder).set_index("key")
    pd.testing.assert_series_equal(after["ref_dinov2"], before)
    assert after["ref_dinov2_model"].notna().all()


def test_scoring_records_roles_and_a_changed_role_relabels_without_rescoring(tmp_path):
    store = Store(tmp_path)
    (scorer,) = build_scorers({"ref": {"scorer": "style_dino", "model": "facebook/dinov2-base"}}, "cpu", "tiny")
    store.write_metric_identity("ref", scorer.identity(), scoring.role_names(scorer))
    assert store.metric_roles("ref") == {"ref": "style:higher"}
    (relabelled,) = build_scorers({"ref": {"scorer": "style_dino", "model": "facebook/dinov2-base", "role": "reference"}},
                                  "cpu", "tiny")
    scoring.check_identities(store, [relabelled])  # the same numbers: no "made differently" refusal
    scoring.record_roles(store, [relabelled])
    assert store.metric_roles("ref") == {"ref": "reference:none"}
    assert store.metric_identity("ref") == scorer.identity()


def _two_roles_table() -> pd.DataFrame:
    """Two contenders on 6 references x 4 prompts: B has more style and more reference similarity (one number in the
    toy world that once was shown as style and as leakage)."""
    rng = np.random.default_rng(0)
    rows = []
    for r in range(6):
        for p in range(4):
            for method, injection, shift in (("ip_adapter", "style", 0.0), ("ip_adapter", "all", 0.2)):
                noise = rng.normal(0, 0.01, 2)
                rows.append({"method": method, "injection": injection, "subtraction": 0.0, "reference_digest": f"r{r}",
                             "prompt": f"p{p}", "seed": 0, "style_csd": 0.5 + shift + noise[0], "ref_dinov2": 0.4 + shift + noise[1]})
    table = pd.DataFrame(rows)
    for m, role in (("style_csd", "style:higher"), ("ref_dinov2", "reference:none")):
        table[f"{m}_model"], table[f"{m}_role"] = "planted", role
    table["model"], table["knob_columns"] = "planted", json.dumps(["subtraction"])
    return table


def test_a_metric_without_a_better_side_is_reported_never_marked():
    settings = default_settings().benchmark
    table = bench.with_contenders(_two_roles_table(), settings)
    summary = bench.method_table(table, ["style_csd", "ref_dinov2"], bench.reference_contender(table, settings), settings, BOOT)
    row = summary[summary["contender"] != summary["reference"]].set_index("metric")
    assert row.loc["style_csd", "better"] == "better" and row.loc["ref_dinov2", "better"] == ""
    assert row.loc["ref_dinov2", "diff_low"] > 0.1  # the difference is there, and shown, but it is neither better nor worse
    assert dict(zip(summary["metric"], summary["role"])) == {"style_csd": "style", "ref_dinov2": "reference"}
    assert summary.attrs["family"] == 1  # only the style comparison is a decision


def test_roles_that_differ_across_folders_are_refused():
    table = _two_roles_table()
    table.loc[table.index[:3], "ref_dinov2_role"] = "leakage:lower"
    with pytest.raises(AnalysisError, match="metric ref_dinov2 has different roles across the folders read"):
        metric_role(table, "ref_dinov2")
