"""The crossed design a table holds, in words: what every report says its intervals speak for.

A report's intervals resample style references and prompts (`stats`), so its header names how many of each it has
(and which sets they come from), how many reference x prompt cells are filled (an interrupted run leaves a cross
with holes, or cells with fewer seeds), which rows lack scores, and how many decisions the report makes.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from styleprobe.analysis.load import (
    CELL_COLUMNS,
    PROMPT_COLUMN,
    REFERENCE_COLUMN,
    REPLICATE_COLUMN,
    data_sets,
    metric_columns,
)
from styleprobe.analysis.stats import Bootstrap

#: Below this many style references an interval over references is rough, whatever its nominal level.
FEW_REFERENCES = 5

SCHEME_WORDS = {
    "two_way": "style references and prompts resampled independently, the cross kept (two-way bootstrap, Owen 2007)",
    "reference": "style references resampled, prompts held fixed (one-way over references)",
    "cell": "reference x prompt cells resampled as if independent (under-covers when effects differ by reference)",
}


def count(n: int, noun: str) -> str:
    """`1 prompt`, `8 prompts`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe_design(table: pd.DataFrame, boot: Bootstrap, unit: Sequence[str] = CELL_COLUMNS) -> list[str]:
    """Markdown lines: the sets, the cells as they are, seeds and replicates per cell, unscored rows, the scheme."""
    n_ref = table[REFERENCE_COLUMN].nunique() if REFERENCE_COLUMN in unit else 1
    n_prompt = table[PROMPT_COLUMN].nunique() if PROMPT_COLUMN in unit else 1
    cells = table.groupby(list(unit), dropna=False)
    n_cells = cells.ngroups
    lines = []
    sets = data_sets(table)
    for _, s in sets.iterrows():
        styles = ", ".join(s["styles"][:8]) + (f", ... ({len(s['styles'])} styles)" if len(s["styles"]) > 8 else "")
        lines.append(f"- Style set `{s['style_set']}` with prompt set `{s['prompt_set']}`: {count(int(s['references']), 'style reference')}"
                     f" ({styles}), {count(int(s['prompts']), 'prompt')}, {count(int(s['rows']), 'image')}.")
    if len(sets) > 1:
        lines.append(f"- **This table pools {len(sets)} combinations of style and prompt sets**; its intervals speak for "
                     "all of them together. To report one set alone, run it into its own results folder (`name=...`).")
    per_cell = cells.size()
    seeds = table.groupby(list(unit), dropna=False)["seed"].nunique() if "seed" in table else per_cell * 0 + 1
    full = n_ref * n_prompt
    crossed = "the full cross" if n_cells == full else f"**{full - n_cells} of the {full} crossed cells are empty**"
    seed_words = (f"{count(int(seeds.iloc[0]), 'seed')} each" if seeds.nunique() == 1
                  else f"{int(seeds.min())} to {int(seeds.max())} seeds (unequal: an interrupted run?)")
    replicates = ""
    if REPLICATE_COLUMN in table and table[REPLICATE_COLUMN].astype(str).ne("").any():
        n_rep = table.loc[table[REPLICATE_COLUMN].astype(str).ne(""), REPLICATE_COLUMN].nunique()
        replicates = f", and {count(int(n_rep), 'training-seed replicate')} where a method draws them"
    lines.append(f"- Design: {count(n_ref, 'style reference')} x {count(n_prompt, 'prompt')}: {count(n_cells, 'cell')} "
                 f"({crossed}); {seed_words}{replicates}, averaged within each cell before resampling.")
    unscored = {m: int(table[m].isna().sum()) for m in metric_columns(table) if table[m].isna().any()}
    if unscored:
        lines.append("- Rows without a score (left out of that metric's numbers): "
                     + ", ".join(f"`{m}` {n} of {len(table)}" for m, n in unscored.items())
                     + "; `styleprobe score results_dir=...` fills them.")
    lines.append(f"- Intervals: {boot.level:.0%}, {SCHEME_WORDS[boot.scheme]} (`analysis.bootstrap.scheme={boot.scheme}`), "
                 f"{boot.n_boot} replicates, seed {boot.seed}"
                 + (", expanded percentile (Hesterberg 2015: corrects the narrowness of small samples)" if boot.expanded else "")
                 + "; differences are paired cell by cell.")
    lines += design_warnings(n_ref, n_prompt, boot)
    return lines


def design_warnings(n_ref: int, n_prompt: int, boot: Bootstrap) -> list[str]:
    """What the numbers of references and prompts mean for the intervals (one-way, rough)."""
    out = []
    if boot.scheme == "two_way" and (n_ref == 1) != (n_prompt == 1):
        other = "prompts" if n_ref == 1 else "style references"
        only = "one style reference" if n_ref == 1 else "one prompt"
        out.append(f"- With {only}, the two-way bootstrap is the one-way bootstrap over {other}: the intervals speak "
                   f"for new {other}, not for a new {'reference' if n_ref == 1 else 'prompt'}.")
    if n_ref == 1 and n_prompt == 1:
        out.append("- **One cell**: there is nothing to resample; intervals have no width and say nothing about new "
                   "references or prompts.")
    elif boot.scheme != "cell" and 1 < n_ref < FEW_REFERENCES:
        out.append(f"- **Only {n_ref} style references**: intervals over references are rough (below "
                   f"{FEW_REFERENCES}, no bootstrap can tell the spread between references well); add references.")
    return out
