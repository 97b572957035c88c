"""The layer-set search: which smallest set of attention modules (blocks, layers) keeps the style? As ordinary sweeps.

`styleprobe experiment=layer_search` runs a greedy search over the method's attention site:
  forward (default): start empty; each round plans the current set plus each remaining candidate, makes and scores
    them like any sweep (keyed, stored, resumable), and adds the candidate with the best objective
    (`analysis.set_scores`); it stops at the first set whose style-kept lower bound reaches
    `analysis.verdict.style_fraction`, or at `search.max_size`;
  backward: start at `all`; each round removes the member whose removal keeps the most; it stops when no removal
    keeps the style-kept lower bound at the fraction, and answers the last set that kept it.
Selection and confirmation use different units (`search.holdout`): the rounds see only the selection part of the
prompts (or references, or the sweep's seeds); the answer, InstantStyle's pair and `all` / `none` are then made and
measured on the held-out part, which took no part in choosing. Both sets of numbers go to the search record,
`<results_dir>/search/<id>.json` (rewritten atomically after every round), from which the report draws.

Every decision is recomputed from the stored scores with a seeded bootstrap, so a killed search rerun replays the
rounds it finished without making an image and resumes in the round it was in. A sharded search (`shard.count=n`)
runs the same loop in every job: each makes its shard of a round, then waits for the other shards' part of it.

`search=masks` is one trial of a multi-objective search (`hydra/sweeper=layer_masks`, Optuna's NSGA-II): the mask
`search.mask.m<i>` (module i of the site) is made and measured beside `all` and `none` on the selection units, and
the job returns its objectives to the sweeper.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from styleprobe.config import as_list, seeds
from styleprobe.disk import atomic_write
from styleprobe.errors import ConfigError

log = logging.getLogger("styleprobe")

KINDS = ("none", "greedy", "masks")
DIRECTIONS = ("forward", "backward")
SPACES = ("modules", "blocks", "layers")
HOLDOUTS = ("prompts", "references", "seeds", "none")
MASK_OBJECTIVES = ("style", "leak", "text")


@dataclass(frozen=True)
class SearchSettings:
    """The `search` config group as typed settings, checked before any model loads."""

    kind: str = "greedy"
    direction: str = "forward"
    space: str = "modules"
    max_size: int = 4
    objective: str = "style_kept"
    leak_weight: float = 1.0
    text_weight: float = 0.0
    max_leak_rise: float = 0.0
    holdout: str = "prompts"
    holdout_fraction: float = 0.5
    confirm_seeds: tuple[int, ...] = ()
    compare: tuple[str, ...] = ("style_layout", "style")
    mask: dict[str, int] = field(default_factory=dict)
    objectives: tuple[str, ...] = ("style", "leak")
    shard_wait_minutes: float = 120.0
    analyze_each_trial: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "SearchSettings":
        from styleprobe.analysis.set_scores import OBJECTIVES

        data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown search setting {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}")
        for name, options in (("kind", KINDS), ("direction", DIRECTIONS), ("space", SPACES), ("objective", OBJECTIVES),
                              ("holdout", HOLDOUTS)):
            if name in data and data[name] not in options:
                raise ConfigError(f"search.{name}={data[name]!r}; choose one of {', '.join(options)}")
        size = data.get("max_size", cls.max_size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"search.max_size={size!r}; give a whole number >= 1 (the largest set a forward search tries)")
        fraction = data.get("holdout_fraction", cls.holdout_fraction)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"search.holdout_fraction={fraction!r}; give the share of units held out for confirmation, "
                              "between 0 and 1 (exclusive), e.g. 0.5")
        for name in ("leak_weight", "text_weight", "max_leak_rise", "shard_wait_minutes"):
            value = data.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"search.{name}={value!r}; give a number >= 0")
        objectives = tuple(as_list(data.get("objectives", cls.objectives)))
        bad = [o for o in objectives if o not in MASK_OBJECTIVES]
        if bad or not objectives or objectives[0] != "style":
            raise ConfigError(f"search.objectives={list(objectives)}; list style first, then any of leak, text")
        mask = dict(data.get("mask") or {})
        for k, v in mask.items():
            if not str(k).startswith("m") or not str(k)[1:].isdigit() or v not in (0, 1):
                raise ConfigError(f"search.mask.{k}={v!r}; a mask is m<i>: 0 or 1 per module i of the site, e.g. search.mask.m3=1")
        return cls(
            kind=str(data.get("kind", cls.kind)), direction=str(data.get("direction", cls.direction)),
            space=str(data.get("space", cls.space)), max_size=size, objective=str(data.get("objective", cls.objective)),
            leak_weight=float(data.get("leak_weight", cls.leak_weight)),
            text_weight=float(data.get("text_weight", cls.text_weight)),
            max_leak_rise=float(data.get("max_leak_rise", cls.max_leak_rise)), holdout=str(data.get("holdout", cls.holdout)),
            holdout_fraction=float(fraction), confirm_seeds=tuple(seeds(data["confirm_seeds"])) if data.get("confirm_seeds") else (),
            compare=tuple(str(c) for c in as_list(data.get("compare", list(cls.compare)))),
            mask={str(k): int(v) for k, v in mask.items()}, objectives=objectives,
            shard_wait_minutes=float(data.get("shard_wait_minutes", cls.shard_wait_minutes)),
            analyze_each_trial=bool(data.get("analyze_each_trial", False)),
        )

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        if self.kind != "masks":
            for name in ("mask", "objectives", "analyze_each_trial"):
                out.pop(name)
        return out


@dataclass(frozen=True)
class UnitSplit:
    """Which units choose (selection) and which confirm: by prompt, reference or seed."""

    holdout: str
    select: tuple[str, ...]  # prompt texts, reference digests or seeds (as text) that choose
    confirm: tuple[str, ...]  # ... that confirm (the same as select for holdout=none)
    seeds: tuple[int, ...]  # the seeds the selection rounds use
    confirm_seeds: tuple[int, ...]  # the seeds the confirmation uses

    def part(self, item: Any) -> str | None:
        """`select`, `confirm` or None (both for holdout=none) for a work item."""
        value = {"prompts": item.prompt.prompt, "references": item.reference.digest, "seeds": str(item.seed),
                 "none": ""}[self.holdout]
        if self.holdout == "none":
            return None
        return "select" if value in self.select else "confirm" if value in self.confirm else "neither"

    def describe(self) -> str:
        if self.holdout == "none":
            return ("no holdout (search.holdout=none): the confirmation reuses the selection units, so its numbers are "
                    "not independent of the choice")
        if self.holdout == "seeds":
            return (f"selection on seeds {list(self.seeds)}, confirmation on fresh seeds {list(self.confirm_seeds)} of the "
                    "same references and prompts (the confirmation removes seed noise from the choice, not the "
                    "references' and prompts': its intervals speak for these references and prompts)")
        return (f"selection on {len(self.select)} {self.holdout}, confirmation on {len(self.confirm)} held-out {self.holdout} "
                "that took no part in choosing")


def split_units(settings: SearchSettings, references: Sequence[Any], prompts: Sequence[Any], seed_list: Sequence[int]) -> UnitSplit:
    """Hold out a share of the prompts (or references) for confirmation, chosen by a hash of each one's text (digest),
    so the split is the same on every machine and a prompt keeps its side when others are added; or fresh seeds."""
    if settings.holdout == "none":
        return UnitSplit("none", (), (), tuple(seed_list), tuple(seed_list))
    if settings.holdout == "seeds":
        fresh = settings.confirm_seeds or tuple(range(max(seed_list) + 1, max(seed_list) + 1 + len(seed_list)))
        clash = sorted(set(fresh) & set(seed_list))
        if clash:
            raise ConfigError(f"search.confirm_seeds {list(fresh)} repeat the selection seeds {clash}; give fresh seeds")
        return UnitSplit("seeds", tuple(map(str, seed_list)), tuple(map(str, fresh)), tuple(seed_list), tuple(fresh))
    values = [p.prompt for p in prompts] if settings.holdout == "prompts" else [r.digest for r in references]
    values = list(dict.fromkeys(values))
    n_confirm = round(len(values) * settings.holdout_fraction)
    if n_confirm < 1 or n_confirm >= len(values):
        raise ConfigError(
            f"search.holdout={settings.holdout} with holdout_fraction={settings.holdout_fraction:g} splits "
            f"{len(values)} {settings.holdout} into {len(values) - n_confirm} to select on and {n_confirm} to confirm on; "
            f"give more {settings.holdout}, another holdout_fraction, or search.holdout="
            f"{'references' if settings.holdout == 'prompts' else 'prompts'}|seeds|none")
    ordered = sorted(values, key=lambda v: hashlib.sha256(v.encode()).hexdigest())
    confirm = set(ordered[:n_confirm])
    return UnitSplit(settings.holdout, tuple(v for v in values if v not in confirm), tuple(v for v in values if v in confirm),
                     tuple(seed_list), tuple(seed_list))


def space_units(layer_map: Any, space: str) -> list[str]:
    """The candidates of a search space, in layer-map order."""
    if space == "blocks":
        return list(layer_map.blocks)
    if space == "layers":
        return [layer.short for layer in layer_map.layers]
    return list(layer_map.modules)


def set_spec(members: Sequence[str]) -> str:
    """The pattern spec of a set (`none` for the empty one); its name is `layers.set_pattern`'s."""
    return "set:" + "+".join(members) if members else "none"


@dataclass
class SearchResult:
    """What a search job did; `objectives` is what a sweeper trial returns."""

    record: dict[str, Any]
    path: Path
    generated: int
    seconds: float
    results_dir: Path
    report: Any = None
    objectives: list[float] | None = None


class _Search:
    """One search job: its plan, the store, the split, and one `make` per round."""

    def __init__(self, cfg: DictConfig):
        from styleprobe.analysis.settings import AnalysisSettings
        from styleprobe.data.prompt_sets import load_prompts
        from styleprobe.data.style_sets import load_style_set
        from styleprobe.run.sweep import prepare

        self.cfg = cfg
        self.settings = SearchSettings.from_config(cfg.search)
        self.seed_list = seeds(cfg.seeds)
        references = load_style_set(cfg.data.style_set)
        prompts = load_prompts(cfg.data.prompts if isinstance(cfg.data.prompts, str) else as_list(cfg.data.prompts))
        self.split = split_units(self.settings, references, prompts, self.seed_list)
        plan_cfg = cfg.copy()
        OmegaConf.update(plan_cfg, "analyze", False, force_add=True)
        OmegaConf.update(plan_cfg, "injection.patterns", ["none", "all"], force_add=True)
        self.plan = prepare(plan_cfg)
        if not self.plan.scorers:
            raise ConfigError("a layer-set search decides on scores: give it metrics (e.g. the model preset's, not metrics=[])")
        self.analysis = AnalysisSettings.from_config(cfg.analysis)
        self.crit, self.boot = self.analysis.criterion, self.analysis.bootstrap
        from styleprobe.analysis.load import scored_columns
        from styleprobe.analysis.report import check_metrics

        scorers = self.plan.scorers
        check_metrics([c for x in scorers for c in x.columns] + scored_columns(self.plan.store),
                      dataclasses.replace(self.analysis, kind="probe"),
                      "metrics=[...] of this search", {c: r for x in scorers for c, r in x.roles().items()})
        if not self.crit.baseline:
            raise ConfigError("a layer-set search measures style kept over a baseline: set analysis.verdict.baseline=none")
        base = self._items(["none", "all"], "select")
        entries = {it.entry.name for it in base}
        variants = {(it.entry.name, repr(it.knobs), it.window.name) for it in base}
        if len(entries) != 1 or len(variants) != 1:
            raise ConfigError(f"a layer-set search runs one method setting at a time; this config plans {len(variants)} "
                              f"({', '.join(sorted(entries))}): give one method, one value per knob and one window")
        self.layer_map = base[0].entry.layer_map
        self.units = space_units(self.layer_map, self.settings.space)
        if len(self.units) < 2:
            raise ConfigError(f"search.space={self.settings.space} has {len(self.units)} candidate on this model; "
                              "choose a finer space (modules, layers)")
        self.method = base[0].entry.name
        self.identity = {"method": self.method, "keys": sorted(it.key for it in base),
                         "metrics": list(self.crit.metrics), "boot": asdict(self.boot)}
        self.generated = 0

    def _items(self, specs: Sequence[str], part: str) -> list[Any]:
        """The items of these pattern specs on one part of the units (`select` or `confirm`)."""
        seed_values = list(self.split.seeds if part == "select" else self.split.confirm_seeds)
        items = self.plan.replan(list(specs), seed_values)
        return [it for it in items if self.split.part(it) in (None, part)]

    def measure(self, sets: Sequence[Sequence[str]], part: str, what: str) -> dict[str, Any]:
        """Make and score `none`, `all` and these sets on a part of the units; their SetScores by set name."""
        from styleprobe.analysis.load import load_results
        from styleprobe.analysis.set_scores import Objective, score_set, style_effect
        from styleprobe.run.plan import shard
        from styleprobe.run.runs import new_run_id
        from styleprobe.run.sweep import make

        specs = list(dict.fromkeys(["none", "all", *(set_spec(s) for s in sets)]))
        items = self._items(specs, part)
        index, count = int(self.cfg.shard.index), int(self.cfg.shard.count)
        made = make(self.plan, shard(items, index, count), self.cfg, new_run_id(), what,
                    {"search": self.settings.kind, "round": what})
        self.generated += made.generated
        if count > 1:
            self._wait_for_shards({it.key for it in items}, what)
        by_name: dict[str, set[str]] = {}
        for it in items:
            by_name.setdefault(str(it.row["injection"]), set()).add(it.key)
        table = load_results(self.plan.store.root)
        objective = Objective(self.settings.objective, self.settings.leak_weight, self.settings.text_weight,
                              self.settings.max_leak_rise)
        names = [str(self._name(s)) for s in sets]
        scores = {n: score_set(table, n, s, by_name.get(n, set()), by_name["all"], by_name["none"], self.crit, objective,
                               self.boot) for n, s in zip(names, sets)}
        effect = style_effect(table, by_name["all"], by_name["none"], self.crit, self.boot)
        return {"scores": scores, "effect": effect, "items": len(items), "made": made.generated}

    def _name(self, members: Sequence[str]) -> str:
        from styleprobe.models.layers import set_pattern

        presets = OmegaConf.to_container(self.cfg.model.presets, resolve=True) if self.cfg.model.get("presets") else {}
        return set_pattern(self.layer_map, self.layer_map.mask(list(members)), presets).name

    def _wait_for_shards(self, keys: set[str], what: str) -> None:
        """Until every shard's items of this round are made and scored (a sharded search decides on all of them)."""
        store, deadline, said = self.plan.store, time.monotonic() + 60 * self.settings.shard_wait_minutes, False
        while True:
            missing = keys - store.done_keys()
            for s in self.plan.scorers:
                missing |= keys - store.scored_keys(s.name)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"{what}: {len(missing)} items of other shards still missing after "
                                  f"{self.settings.shard_wait_minutes:g} minutes; rerun this job once they finish "
                                  "(it resumes) or raise search.shard_wait_minutes")
            if not said:
                log.info("%s: waiting for %d items of the other shards", what, len(missing))
                said = True
            time.sleep(5)


def run(cfg: DictConfig) -> SearchResult:
    """`styleprobe experiment=layer_search` (greedy) or one `search=masks` trial; see the module docstring."""
    from styleprobe.run.runs import compact_tables

    start = time.perf_counter()
    job = _Search(cfg)
    if job.settings.kind == "masks":
        record, objectives = _mask_trial(job)
        path = _record_path(job, "masks", record["set"]["name"])
    else:
        record, objectives = _greedy(job), None
        path = _record_path(job, "greedy")
    record["seconds"] = round(time.perf_counter() - start, 1)
    _write(path, record)
    compact_tables(job.plan.store)
    report = None
    if cfg.get("analyze", False) and (job.settings.kind == "greedy" or job.settings.analyze_each_trial):
        from styleprobe.analysis.report import analyze, log_report

        report = analyze(job.plan.store.root, job.analysis)
        log_report(report, job.analysis)
    return SearchResult(record, path, job.generated, time.perf_counter() - start, job.plan.store.root, report, objectives)


def _record_path(job: _Search, kind: str, name: str = "") -> Path:
    blob = json.dumps({**job.identity, "split": asdict(job.split), "settings": job.settings.record(), "name": name},
                      sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return job.plan.store.root / "search" / (kind if kind == "greedy" else "masks") / f"{digest}.json"


def _write(path: Path, record: dict[str, Any]) -> None:
    text = json.dumps(record, indent=1, allow_nan=False, default=_plain)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "as_record"):
        return value.as_record()
    return str(value)


def _header(job: _Search) -> dict[str, Any]:
    from styleprobe.analysis.set_scores import Objective

    objective = Objective(job.settings.objective, job.settings.leak_weight, job.settings.text_weight,
                          job.settings.max_leak_rise)
    return {
        "study": hashlib.sha256(json.dumps({**job.identity, "split": asdict(job.split)}, sort_keys=True).encode()).hexdigest()[:16],
        "method": job.method, "site": job.layer_map.site, "space": job.settings.space, "candidates": job.units,
        "settings": job.settings.record(), "objective": objective.describe(job.crit),
        "criterion": {"style_metric": job.crit.style_metric, "leak_metric": job.crit.leak_metric,
                      "text_metric": job.crit.text_metric, "style_fraction": job.crit.style_fraction,
                      "reference": job.crit.reference, "baseline": job.crit.baseline},
        "bootstrap": asdict(job.boot), "split": {**asdict(job.split), "describe": job.split.describe()},
        "model": str(job.cfg.model.name),
    }


def _greedy(job: _Search) -> dict[str, Any]:
    """The rounds, the answer and its confirmation (see the module docstring)."""
    s, crit, path = job.settings, job.crit, _record_path(job, "greedy")
    record: dict[str, Any] = {**_header(job), "kind": "greedy", "rounds": [], "finished": False}
    forward = s.direction == "forward"
    current: list[str] = [] if forward else list(job.units)
    answer: list[str] | None = None if forward else list(job.units)
    stop = ""
    compare = _compare_sets(job)
    if compare:  # InstantStyle's pair on the selection units too: beside the rounds' candidates in the Pareto figure
        measured = job.measure(list(compare.values()), "select", "search: InstantStyle's sets on the selection units")
        record["compare_selection"] = [x.as_record() for x in measured["scores"].values()]
    for number in range(1, len(job.units) + 1):
        if forward and (len(current) >= s.max_size or len(current) == len(job.units)):
            stop = "max_size" if len(current) >= s.max_size else "space exhausted"
            break
        if not forward and len(current) == 1:
            stop = "one member left"
            break
        options = ([current + [u] for u in job.units if u not in current] if forward
                   else [[m for m in current if m != u] for u in current])
        options = [sorted(o, key=job.units.index) for o in options]
        what = f"search round {number} ({'add to' if forward else 'remove from'} {set_spec(current)}: {len(options)} candidates)"
        measured = job.measure(options, "select", what)
        scores = list(measured["scores"].values())
        effect = measured["effect"]
        if number == 1:
            record["effect"] = {"estimate": effect[0], "low": effect[1], "high": effect[2], "n_units": effect[3]}
        if not effect[1] > 0:  # no share of all's effect is defined: nothing to choose by
            record["rounds"].append({"round": number, "base": set_spec(current),
                                     "candidates": [x.as_record() for x in scores], "chosen": None, "members": current,
                                     "admissible": False, "images": measured["items"], "made": measured["made"]})
            log.warning("%s: `%s` does not raise %s over `%s` on the selection units (%+.4f [%+.4f, %+.4f]): the search "
                        "stops", what, crit.reference, crit.style_metric, crit.baseline, *effect[:3])
            stop = "no style effect"
            break
        from styleprobe.analysis.set_scores import best

        chosen, admissible = best(scores)
        entry = {"round": number, "base": set_spec(current), "candidates": [x.as_record() for x in scores],
                 "chosen": chosen.name, "members": chosen.members, "admissible": admissible,
                 "images": measured["items"], "made": measured["made"]}
        record["rounds"].append(entry)
        log.info("%s: chose %s (style kept %.3f [%.3f, %.3f], Δ leakage %+.4f%s)", what, chosen.name, chosen.style_kept,
                 chosen.style_kept_low, chosen.style_kept_high, chosen.leak, "" if admissible else "; no candidate met the leakage constraint")
        _write(path, record)
        if forward:
            current = chosen.members
            if chosen.keeps(crit.style_fraction):
                answer, stop = current, "reached"
                break
        else:
            if not chosen.keeps(crit.style_fraction):
                stop = "no removal keeps the style"
                break
            current = answer = chosen.members
    record["stop"] = stop or "space exhausted"
    record["answer"] = answer
    record["best"] = current
    confirm_set = answer if answer is not None else current
    sets = [m for m in [confirm_set, *compare.values()] if m]
    measured = job.measure(list({tuple(m): m for m in sets}.values()), "confirm", "search confirmation")
    record["confirmation"] = {"sets": [x.as_record() for x in measured["scores"].values()],
                              "effect": dict(zip(("estimate", "low", "high", "n_units"), measured["effect"])),
                              "images": measured["items"], "made": measured["made"],
                              "answer": job._name(confirm_set) if confirm_set else "none",
                              "compare": {k: job._name(v) for k, v in compare.items()}}
    selection = {x["name"]: x for r in record["rounds"] for x in r["candidates"]}
    record["selection"] = {"answer": selection.get(job._name(confirm_set)) if confirm_set else None}
    record["images_generated"] = job.generated
    record["finished"] = True
    return record


def _compare_sets(job: _Search) -> dict[str, list[str]]:
    """`search.compare` (InstantStyle's pair, its style block) as member lists of this search's space, where the model has them."""
    from styleprobe.models.layers import expand_patterns

    presets = OmegaConf.to_container(job.cfg.model.presets, resolve=True) if job.cfg.model.get("presets") else {}
    out = {}
    for name in job.settings.compare:
        try:
            pattern = expand_patterns([name], job.layer_map, presets)[0]
        except ConfigError as err:
            log.warning("search.compare: %s is not on this model (%s); left out of the confirmation", name, err)
            continue
        members = [u for u in job.units if all(pattern.scales[i] for i in job.layer_map.layers_in(u))]
        if job.layer_map.mask(members) != tuple(1.0 if x else 0.0 for x in pattern.scales):
            log.warning("search.compare: %s is not a union of %s; left out of the confirmation", name, job.settings.space)
            continue
        out[name] = members
    return out


def _mask_trial(job: _Search) -> tuple[dict[str, Any], list[float]]:
    """One trial: the mask's set beside `all` and `none` on the selection units; the objectives the sweeper optimises."""
    s = job.settings
    modules = list(job.layer_map.modules)
    beyond = sorted(k for k in s.mask if int(k[1:]) >= len(modules))
    if beyond:
        raise ConfigError(f"search.mask names {', '.join(beyond)}, but this site has {len(modules)} modules (m0..m{len(modules) - 1})")
    members = [m for i, m in enumerate(modules) if s.mask.get(f"m{i}", 0)]
    name = job._name(members)
    measured = job.measure([members], "select", f"mask trial {name}")
    score = measured["scores"][name]
    values = {"style": score.style_gain, "leak": score.leak, "text": score.text}
    objectives = [float(values[o]) if math.isfinite(values[o]) else 0.0 for o in s.objectives]
    record = {**_header(job), "kind": "masks", "set": score.as_record(), "mask": s.mask,
              "objectives": dict(zip(s.objectives, objectives)), "images": measured["items"], "made": measured["made"],
              "images_generated": job.generated, "finished": True}
    log.info("mask trial %s: %s", name, ", ".join(f"{k} {v:+.4f}" for k, v in record["objectives"].items()))
    return record, objectives


def status_notes(root: Path) -> list[str]:
    """One line per search record in a results folder, for `styleprobe status`: where each search stands."""
    notes = []
    for path in sorted((Path(root) / "search" / "greedy").glob("*.json")):
        record = json.loads(path.read_text())
        rounds = record.get("rounds", [])
        last = f"; round {rounds[-1]['round']} chose {rounds[-1]['chosen']}" if rounds else ""
        state = f"finished ({record.get('stop')}; answer {record.get('answer')})" if record.get("finished") else "in progress"
        notes.append(f"layer-set search {path.stem} ({record['settings']['direction']}, {record['method']}): "
                     f"{len(rounds)} round(s){last}; {state}")
    masks = list((Path(root) / "search" / "masks").glob("*.json"))
    if masks:
        notes.append(f"{len(masks)} mask trial(s) in search/masks/")
    if notes:
        notes.append("a search plans its patterns round by round: the counts above are `none` and `all` on every "
                     "unit; the rounds' sets are in its record")
    return notes


def check(cfg: DictConfig) -> None:
    """Everything a search job would refuse, checked without loading a model (a multirun checks it once, before launch)."""
    _Search(cfg)
