"""The layer-set search in the report: its rounds, its answer with selection and confirmation numbers, the search
trajectory and the Pareto front of every set measured on the same selection units (greedy candidates, InstantStyle's
sets and the Optuna sweeper's masks).

Read from the search records a search writes (`<results_dir>/search/greedy/*.json`, `search/masks/*.json`, see
`run.search`): the numbers there are the ones the search decided on, recomputed from the stored scores with the same
seeded bootstrap whenever the search reruns.
"""

from __future__ import annotations

import functools
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from styleprobe.analysis.figures import _figure, _title, paper, place_labels
from styleprobe.analysis.set_scores import SetScore
from styleprobe.errors import AnalysisError

SEARCH_FOLDER = "search"


def records(dirs: Sequence[Path], kind: str) -> list[dict[str, Any]]:
    """Every finished search record of this kind (`greedy` or `masks`) in the folders, in file order."""
    out = []
    for d in dirs:
        for path in sorted((Path(d) / SEARCH_FOLDER / kind).glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)):
            record = json.loads(path.read_text())
            if record.get("finished"):
                out.append({**record, "_path": str(path)})
    return out


def has_search(dirs: Sequence[Path]) -> bool:
    return any(records(dirs, "greedy")) or any(records(dirs, "masks"))


def _score(x: dict[str, Any] | None) -> SetScore | None:
    return SetScore.from_record(x) if x else None


def _ci(est: float, low: float, high: float, signed: bool = True, digits: int = 3) -> str:
    if not np.isfinite(est):
        return "n/a"
    f = (lambda v: f"{v:+.{digits}f}") if signed else (lambda v: f"{v:.{digits}f}")
    bounds = f" [{f(low)}, {f(high)}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{f(est)}{bounds}"


def _set_words(members: Sequence[str], space: str) -> str:
    noun = {"modules": "module", "blocks": "block", "layers": "layer"}[space]
    return "{" + ", ".join(f"`{m}`" for m in members) + "}" + f" ({len(members)} {noun}{'s' if len(members) != 1 else ''})"


def rounds_table(record: dict[str, Any]) -> pd.DataFrame:
    """Every candidate of every round, with its numbers and whether it was chosen."""
    rows = []
    for r in record["rounds"]:
        for c in r["candidates"]:
            rows.append({"round": r["round"], "base": r["base"], "set": c["name"], "size": len(c["members"]),
                         "chosen": c["name"] == r["chosen"], **{k: c[k] for k in (
                             "style_kept", "style_kept_low", "style_kept_high", "style_gain", "leak", "leak_low",
                             "leak_high", "text", "text_low", "text_high", "admissible", "objective", "n_units")}})
    return pd.DataFrame(rows)


def measured_sets(record: dict[str, Any] | None, masks: Sequence[dict[str, Any]], study: str) -> pd.DataFrame:
    """Every set measured on one study's selection units, once each: greedy candidates, InstantStyle's sets, masks."""
    rows: dict[str, dict[str, Any]] = {}
    greedy = [c for r in record["rounds"] for c in r["candidates"]] if record else []
    for source, scores in (("greedy", greedy), ("compare", (record or {}).get("compare_selection", [])),
                           ("mask", [m["set"] for m in masks if m.get("study") == study])):
        for c in scores:
            rows.setdefault(c["name"], {"set": c["name"], "size": len(c["members"]), "source": source,
                                        "style_kept": c["style_kept"], "style_gain": c["style_gain"], "leak": c["leak"],
                                        "text": c["text"]})
    frame = pd.DataFrame(list(rows.values()))
    if not frame.empty:
        frame = frame.astype({"style_kept": float, "style_gain": float, "leak": float, "text": float})
        frame["pareto"] = pareto_front(frame["style_gain"].to_numpy(), frame["leak"].to_numpy())
    return frame


def pareto_front(style: np.ndarray, leak: np.ndarray) -> np.ndarray:
    """Which points no other point dominates (at least as much style and at most as much leakage, better in one)."""
    ok = np.isfinite(style) & np.isfinite(leak)
    front = np.zeros(len(style), dtype=bool)
    for i in np.flatnonzero(ok):
        better = ok & (style >= style[i]) & (leak <= leak[i]) & ((style > style[i]) | (leak < leak[i]))
        front[i] = not better.any()
    return front


def _short(name: str) -> str:
    """A set's name for a label: module names without `attentions.` and `_blocks`."""
    return (name.replace("one_hot:", "").replace("set:", "").replace("attentions.", "a").replace("_blocks.", "")
            .replace("mid_block.", "mid.").replace("transformer_blocks.", "t"))


@paper
def trajectory(table: pd.DataFrame, record: dict[str, Any]) -> Figure:
    """Style kept, leakage and text against `all` vs set size: each round's candidates (dots) and its chosen set (with
    intervals, labelled), the stopping line, and the answer's confirmation on the held-out units."""
    crit = record["criterion"]
    rounds = rounds_table(record)
    if rounds.empty:
        raise AnalysisError("search trajectory: the search made no round")
    fig = _figure(2.6)
    axes = fig.subplots(1, 3)
    confirm = {c["name"]: c for c in record["confirmation"]["sets"]}
    answer = confirm.get(record["confirmation"]["answer"])
    panels = (("style_kept", f"style kept: share of all's effect\n({crit['style_metric']})"),
              ("leak", f"Δ leakage vs all ({crit['leak_metric']})"), ("text", f"Δ text vs all ({crit['text_metric']})"))
    for ax, (col, label) in zip(axes, panels):
        ax.scatter(rounds["size"], rounds[col], s=6, color="#b0b0b0", label="candidates", zorder=1)
        chosen = rounds[rounds["chosen"]].sort_values("size")
        low, high = chosen[f"{col}_low"], chosen[f"{col}_high"]
        ax.errorbar(chosen["size"], chosen[col], yerr=[chosen[col] - low, high - chosen[col]], color="#d62728",
                    marker="o", markersize=3, linewidth=1, capsize=2, label="chosen (selection units)", zorder=3)
        if answer is not None and answer.get(col) is not None:
            est, lo, hi = (answer.get(col), answer.get(f"{col}_low"), answer.get(f"{col}_high"))
            if lo is not None and hi is not None:
                ax.errorbar([len(answer["members"]) + 0.15], [est], yerr=[[est - lo], [hi - est]], color="#1f77b4",
                            marker="s", markersize=3, capsize=2, linewidth=1, label="answer (held-out units)", zorder=3)
            else:
                ax.scatter([len(answer["members"]) + 0.15], [est], color="#1f77b4", marker="s", s=9, zorder=3)
        if col == "style_kept":
            ax.axhline(crit["style_fraction"], color="black", linestyle="--", linewidth=0.6)
            names = [(float(x), float(y), _short(n), "#d62728") for x, y, n in
                      zip(chosen["size"], chosen[col], chosen["set"]) if np.isfinite(y)]
        else:
            ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xlabel(f"set size ({record['space']})")
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(_title(table, f"Layer-set search ({record['settings']['direction']}, {record['method']} on "
                               f"{record['site']}): trajectory"))
    place_labels(axes[0], names)  # last: it settles the layout
    return fig


@paper
def pareto(table: pd.DataFrame, record: dict[str, Any], sets: pd.DataFrame) -> Figure:
    """Style gain over `none` vs leakage against `all` (the multi-objective search's two objectives) of every set
    measured on the selection units; the non-dominated ones joined, InstantStyle's pair and the greedy answer marked.
    The dashed line is `style_fraction` of `all`'s gain: a set above it keeps that share (point estimate)."""
    crit = record["criterion"]
    sets = sets[np.isfinite(sets["style_gain"]) & np.isfinite(sets["leak"])] if not sets.empty else sets
    if sets.empty:
        raise AnalysisError("Pareto figure: no set with both a style gain and a leakage difference")
    fig = _figure(3.8, 6.0)
    ax = fig.subplots()
    colors = {"greedy": "#8c8c8c", "mask": "#9467bd", "compare": "#1f77b4"}
    words = {"greedy": "greedy candidates", "mask": "Optuna masks", "compare": "InstantStyle's sets"}
    for source, part in sets.groupby("source"):
        ax.scatter(part["leak"], part["style_gain"], s=10, color=colors[str(source)], label=words[str(source)])
    front = sets[sets["pareto"]].sort_values("leak")
    ax.plot(front["leak"], front["style_gain"], color="black", linewidth=0.8, label="Pareto front")
    marks = []
    confirmation = record.get("confirmation", {})
    for name, what, color in ((confirmation.get("compare", {}).get("style_layout"), "InstantStyle's pair", "#1f77b4"),
                              (confirmation.get("answer"), "greedy answer", "#d62728")):
        row = sets[sets["set"] == name]
        if name and not row.empty:
            x, y = float(row["leak"].iloc[0]), float(row["style_gain"].iloc[0])
            ax.scatter([x], [y], s=40, facecolors="none", edgecolors=color, linewidths=1.2)
            marks.append((x, y, f"{what}: {_short(name)}", color))
    effect = record.get("effect", {}).get("estimate")
    if effect is not None and np.isfinite(effect):
        ax.axhline(crit["style_fraction"] * effect, color="black", linestyle="--", linewidth=0.6)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel(f"Δ leakage vs all ({crit['leak_metric']}; left is less)")
    ax.set_ylabel(textwrap.fill(f"style gain over none ({crit['style_metric']})", 40))
    ax.legend(loc="best", frameon=False)
    fig.suptitle(_title(table, f"Layer sets on the selection units: {len(sets)} sets, {int(sets['pareto'].sum())} "
                               "on the front").replace("; model", ";\nmodel", 1))
    place_labels(ax, marks, list(zip(sets["leak"], sets["style_gain"])))  # last: it settles the layout
    return fig


def section(table: pd.DataFrame, dirs: Sequence[Path], table_out: Callable[[str, pd.DataFrame], None],
            figure_out: Callable[[str, str, Any], None], level: float) -> list[str]:
    """The report's layer-search section (one subsection per greedy search), its tables and figures."""
    greedy, masks = records(dirs, "greedy"), records(dirs, "masks")
    if not greedy and not masks:
        return []
    lines = ["## Smallest sufficient set: the layer-set search", ""]
    studies = list(dict.fromkeys([r["study"] for r in greedy] + [m["study"] for m in masks]))
    many = len(greedy) + len(studies) > 2
    for n, study in enumerate(studies):
        searches = [r for r in greedy if r["study"] == study]
        trials = [m for m in masks if m["study"] == study]
        for k, record in enumerate(searches):  # the same units searched with other settings: each in turn, newest last
            suffix = f"_{n + 1}_{k + 1}" if many else ""
            lines += _greedy_lines(record, level)
            table_out(f"search_rounds{suffix}", rounds_table(record))
            table_out(f"search_confirmation{suffix}", pd.DataFrame(record["confirmation"]["sets"]))
            figure_out("search trajectory", f"search_trajectory{suffix}", functools.partial(trajectory, table, record))
        if not searches:
            lines += [f"### {trials[0]['method']} on `{trials[0]['site']}`: {len(trials)} mask trials", "",
                      f"- Units: {trials[0]['split']['describe']}; no greedy search in this folder shares them "
                      "(`styleprobe experiment=layer_search` with the same settings adds it).", ""]
        if trials:
            lines += [f"Multi-objective search (Optuna through `hydra/sweeper=layer_masks`): {len(trials)} masks measured, "
                      f"objectives {', '.join(trials[0]['settings'].get('objectives', ['style', 'leak']))}.", ""]
        anchor = searches[-1] if searches else None
        sets = measured_sets(anchor, trials, study)
        for other in searches[:-1]:  # candidates the other searches of these units measured
            more = measured_sets(other, [], study)
            sets = pd.concat([sets, more[~more["set"].isin(sets["set"])]], ignore_index=True) if not more.empty else sets
        if not sets.empty:
            sets["pareto"] = pareto_front(sets["style_gain"].to_numpy(), sets["leak"].to_numpy())
            suffix = f"_{n + 1}" if len(studies) > 1 else ""
            table_out(f"search_sets{suffix}", sets)
            figure_out("search Pareto front", f"search_pareto{suffix}",
                       functools.partial(lambda r, x: (pareto(table, r, x), _pareto_notes(x)), anchor or trials[0], sets))
    return lines


def _pareto_notes(sets: pd.DataFrame) -> list[str]:
    front = sets[sets["pareto"]].sort_values("leak")
    return [f"On the front (most style gain for the least leakage): {', '.join(f'`{s}`' for s in front['set'])}.",
            "Points are estimates on the selection units (the rounds' intervals are in `tables/search_rounds*.csv`); a set "
            "picked for lying on the front is optimistic on the units it was picked on: confirm it on held-out ones."]


def _greedy_lines(record: dict[str, Any], level: float) -> list[str]:
    s, crit, split = record["settings"], record["criterion"], record["split"]
    fraction = crit["style_fraction"]
    effect = record.get("effect", {})
    lines = [
        f"### {record['method']} on `{record['site']}`: {s['direction']} search over {len(record['candidates'])} {s['space']}", "",
        f"- Objective ({'`search.objective`'}): {record['objective']}.",
        f"- Stopping rule: {'the first set whose style-kept lower bound reaches' if s['direction'] == 'forward' else 'remove while the chosen set keeps a style-kept lower bound of at least'} "
        f"{fraction:g} (`analysis.verdict.style_fraction`)" + (f", or {s['max_size']} {s['space']} (`search.max_size`)" if s["direction"] == "forward" else "") + ".",
        f"- Units: {split['describe']} (`search.holdout={s['holdout']}`).",
        f"- `{crit['reference']}` over `{crit['baseline']}` on the selection units: {_ci(effect.get('estimate', math.nan), effect.get('low', math.nan), effect.get('high', math.nan))} "
        f"on {crit['style_metric']} ({effect.get('n_units', 0)} cells).",
        "",
    ]
    confirm = {c["name"]: SetScore.from_record(c) for c in record["confirmation"]["sets"]}
    answer_name = record["confirmation"]["answer"]
    chosen = _score(record.get("selection", {}).get("answer"))
    held = confirm.get(answer_name)
    stop = record["stop"]
    if record.get("answer"):
        members = record["answer"]
        head = (f"**The smallest set found that keeps >= {fraction * 100:g}% of the style is {_set_words(members, s['space'])}**"
                if s["direction"] == "forward" or stop != "one member left" else
                f"**The smallest set backward elimination reached that keeps >= {fraction * 100:g}% of the style is {_set_words(members, s['space'])}**")
    elif stop == "no style effect":
        head = (f"**No answer:** `{crit['reference']}` does not raise {crit['style_metric']} over `{crit['baseline']}` on the "
                "selection units, so no set has a share of its effect to keep")
    else:
        best = record.get("best") or []
        head = (f"**No set of up to {s['max_size']} {s['space']} keeps >= {fraction * 100:g}% of the style at this level**; "
                f"the best found is {_set_words(best, s['space'])}" if best else "**No set was chosen**")
    sel = f"selection: style kept {_ci(chosen.style_kept, chosen.style_kept_low, chosen.style_kept_high, False)}" if chosen else ""
    conf = (f"confirmation on held-out units: style kept {_ci(held.style_kept, held.style_kept_low, held.style_kept_high, False)}, "
            f"Δ leakage vs all {_ci(held.leak, held.leak_low, held.leak_high, digits=4)}, "
            f"Δ text vs all {_ci(held.text, held.text_low, held.text_high, digits=4)} ({held.n_units} cells)") if held else ""
    lines += [head + (f" ({'; '.join(x for x in (sel, conf) if x)})" if sel or conf else "") + f". Stopped: {stop}.", ""]
    pair = record["confirmation"].get("compare", {})
    for label, key in (("InstantStyle's pair", "style_layout"), ("InstantStyle's style block", "style")):
        x = confirm.get(pair.get(key, ""))
        if x is not None:
            lines.append(f"- {label} (`{x.name}`) keeps {_ci(x.style_kept, x.style_kept_low, x.style_kept_high, False)} of the style on the "
                         f"held-out units, Δ leakage vs all {_ci(x.leak, x.leak_low, x.leak_high, digits=4)}, Δ text vs all "
                         f"{_ci(x.text, x.text_low, x.text_high, digits=4)}.")
    c_effect = record["confirmation"].get("effect", {})
    lines += [f"- `{crit['reference']}` over `{crit['baseline']}` on the held-out units: "
              f"{_ci(c_effect.get('estimate', math.nan), c_effect.get('low', math.nan), c_effect.get('high', math.nan))} "
              f"({c_effect.get('n_units', 0)} cells); a share is n/a where this interval reaches 0.", ""]
    lines += ["| round | from | chosen | style kept [CI] | Δ leakage vs all [CI] | Δ text vs all [CI] | candidates | images |",
              "|---|---|---|---|---|---|---|---|"]
    for r in record["rounds"]:
        c = next((SetScore.from_record(x) for x in r["candidates"] if x["name"] == r["chosen"]), None)
        if c is None:
            lines.append(f"| {r['round']} | `{r['base']}` | none | n/a | n/a | n/a | {len(r['candidates'])} | {r['images']} |")
            continue
        flag = "" if r["admissible"] else " (no candidate met the leakage constraint)"
        lines.append(f"| {r['round']} | `{r['base']}` | `{c.name}`{flag} | {_ci(c.style_kept, c.style_kept_low, c.style_kept_high, False)} | "
                     f"{_ci(c.leak, c.leak_low, c.leak_high, digits=4)} | {_ci(c.text, c.text_low, c.text_high, digits=4)} | "
                     f"{len(r['candidates'])} | {r['images']} |")
    n_sets = sum(len(r["candidates"]) for r in record["rounds"])
    lines += ["", f"Decisions: the rounds compared {n_sets} candidate sets on the selection units; their intervals are per set "
              f"({level:.0%} each, unadjusted) and the chosen set's are optimistic there, being chosen on those units. "
              f"The confirmation measures {len(confirm)} set(s) on units that took no part in choosing, each at {level:.0%}; "
              f"for all {len(confirm)} together at least {1 - len(confirm) * (1 - level):.0%} (Bonferroni).",
              f"Images: {record['images_generated']} generated by the last run of this search, "
              f"{sum(r['images'] for r in record['rounds']) + record['confirmation']['images']} in its rounds and confirmation; "
              f"record `{Path(record['_path']).relative_to(Path(record['_path']).parents[2]).as_posix()}`.", ""]
    return lines
