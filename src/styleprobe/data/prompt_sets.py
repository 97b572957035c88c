"""Prompt sets: target prompts, each with the subject it names (so the subject can be checked in the output), built in
or read from .txt, .csv, .yaml or .json files or given inline.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleprobe.data.style_sets import BUILTIN_PREFIX
from styleprobe.errors import config_error, one_line

PROMPT_EXTENSIONS: tuple[str, ...] = (".txt", ".csv", ".yaml", ".yml", ".json")


@dataclass(frozen=True)
class PromptSpec:
    """A target prompt plus the subject it names, so the subject can be checked in the output."""

    prompt: str
    subject: str


# Subjects deliberately unrelated to the built-in style contents (shapes), so content leakage
# from the reference is distinguishable from the prompt's own subject.
_OBJECTS: tuple[PromptSpec, ...] = (
    PromptSpec("a cat sitting on a chair", "a cat"),
    PromptSpec("a bicycle leaning against a wall", "a bicycle"),
    PromptSpec("a lighthouse on a rocky coast", "a lighthouse"),
    PromptSpec("a teapot on a kitchen table", "a teapot"),
    PromptSpec("a mountain landscape with a lake", "a mountain landscape"),
    PromptSpec("a portrait of a woman", "a portrait of a woman"),
)


# The method benchmark's prompts, written for styleprobe: 11 each of objects, animals, people and scenes, every one
# naming one subject plainly (no style words: the method brings the style). None shows a circle, square, triangle
# or house, the built-in references' contents, so a reference's content in an image is leakage, not the prompt.
_BENCHMARK: tuple[PromptSpec, ...] = (
    # objects
    PromptSpec("a red umbrella", "an umbrella"),
    PromptSpec("a vintage typewriter on a desk", "a typewriter"),
    PromptSpec("a bowl of lemons", "a bowl of lemons"),
    PromptSpec("an acoustic guitar", "a guitar"),
    PromptSpec("a pair of leather boots", "boots"),
    PromptSpec("a steaming cup of coffee", "a cup of coffee"),
    PromptSpec("an old brass key", "a key"),
    PromptSpec("a sailboat", "a sailboat"),
    PromptSpec("a stack of books", "books"),
    PromptSpec("a vase of sunflowers", "sunflowers"),
    PromptSpec("a steam locomotive", "a locomotive"),
    # animals
    PromptSpec("a fox in the snow", "a fox"),
    PromptSpec("an owl on a branch", "an owl"),
    PromptSpec("a horse running in a field", "a horse"),
    PromptSpec("a goldfish in a bowl", "a goldfish"),
    PromptSpec("an elephant", "an elephant"),
    PromptSpec("a sleeping dog", "a dog"),
    PromptSpec("a hummingbird near a flower", "a hummingbird"),
    PromptSpec("a tortoise", "a tortoise"),
    PromptSpec("a rabbit eating a carrot", "a rabbit"),
    PromptSpec("a whale jumping out of the sea", "a whale"),
    PromptSpec("a butterfly", "a butterfly"),
    # people
    PromptSpec("a portrait of an old man with a beard", "an old man"),
    PromptSpec("a girl reading a book", "a girl"),
    PromptSpec("a chef cooking in a kitchen", "a chef"),
    PromptSpec("a dancer in mid-leap", "a dancer"),
    PromptSpec("an astronaut", "an astronaut"),
    PromptSpec("a knight in armour", "a knight"),
    PromptSpec("a violinist on stage", "a violinist"),
    PromptSpec("a child flying a kite", "a child"),
    PromptSpec("a fisherman in a small boat", "a fisherman"),
    PromptSpec("a woman riding a bicycle", "a woman on a bicycle"),
    PromptSpec("two friends sharing a meal", "two people"),
    # scenes
    PromptSpec("a city street at night", "a city street"),
    PromptSpec("a forest path in autumn", "a forest path"),
    PromptSpec("a harbour with fishing boats", "a harbour"),
    PromptSpec("a desert with sand dunes", "a desert"),
    PromptSpec("a waterfall in a jungle", "a waterfall"),
    PromptSpec("a snowy mountain village", "a mountain village"),
    PromptSpec("a busy street market", "a market"),
    PromptSpec("a bridge over a river", "a bridge"),
    PromptSpec("a castle on a hill", "a castle"),
    PromptSpec("a beach at sunset", "a beach"),
    PromptSpec("a library with tall shelves", "a library"),
)


# The toy world's prompts: each names a shape only, so the style is the method's to bring.
_TOY_PROMPTS: tuple[PromptSpec, ...] = tuple(PromptSpec(f"a {c}", f"a {c}") for c in (
    "circle", "square", "triangle", "star", "cross", "heart", "crescent", "arrow"))


BUILTIN_PROMPT_SETS: dict[str, tuple[PromptSpec, ...]] = {
    "toy": _TOY_PROMPTS,
    "objects": _OBJECTS,
    "objects_small": _OBJECTS[:2],
    "benchmark": _BENCHMARK,
}


def builtin_prompt_sets() -> list[str]:
    """Names usable as ``builtin:<name>`` prompt sets."""
    return sorted(BUILTIN_PROMPT_SETS)


def _make_spec(prompt: Any, subject: Any, where: str) -> PromptSpec:
    """Normalise one entry; a missing/blank subject defaults to the whole prompt."""
    if not isinstance(prompt, str):
        raise config_error(f"prompt set: prompt must be text, got {type(prompt).__name__} ({where}); quote it as a string")
    if not prompt.strip():
        raise config_error(f"prompt set: empty prompt ({where}); remove the entry or write a prompt")
    if subject is None or (isinstance(subject, str) and not subject.strip()):
        subject = prompt
    if not isinstance(subject, str):
        raise config_error(f"prompt set: subject must be text, got {type(subject).__name__} ({where}); quote it as a string")
    return PromptSpec(prompt=prompt.strip(), subject=subject.strip())


def _from_items(items: list[Any], origin: str) -> list[PromptSpec]:
    """Accept strings, {prompt, subject} mappings (incl. OmegaConf DictConfig) or PromptSpec objects."""
    specs: list[PromptSpec] = []
    for i, item in enumerate(items, start=1):
        where = f"entry {i} of {origin}"
        if isinstance(item, PromptSpec):
            specs.append(_make_spec(item.prompt, item.subject, where))
        elif isinstance(item, str):
            specs.append(_make_spec(item, None, where))
        elif isinstance(item, Mapping) or hasattr(item, "items"):
            entry = {str(k): v for k, v in dict(item).items()}
            unknown = sorted(set(entry) - {"prompt", "subject"})
            if unknown:
                raise config_error(
                    f"prompt set: unknown key(s) {', '.join(unknown)} in {where}; allowed keys are prompt, subject"
                )
            if "prompt" not in entry:
                raise config_error(f"prompt set: missing 'prompt' key in {where}; write it as {{prompt: ..., subject: ...}}")
            specs.append(_make_spec(entry["prompt"], entry.get("subject"), where))
        else:
            raise config_error(
                f"prompt set: unsupported entry of type {type(item).__name__} ({where}); "
                "use a string or a {prompt, subject} mapping"
            )
    return specs


def _read_txt(path: Path) -> list[PromptSpec]:
    """One prompt per line, ``#`` comments, optional ``prompt | subject``."""
    specs: list[PromptSpec] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        prompt, sep, subject = raw.partition(" | ")
        specs.append(_make_spec(prompt, subject if sep else None, f"line {n} of {path}"))
    return specs


def _read_csv(path: Path) -> list[PromptSpec]:
    """CSV with a ``prompt`` column and an optional ``subject`` column."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0][1]]
    if "prompt" not in header:
        raise config_error(
            f"prompt set: {path} has no 'prompt' column (found: {', '.join(h for h in header if h) or 'none'}); "
            "add a header row prompt,subject"
        )
    pi = header.index("prompt")
    si = header.index("subject") if "subject" in header else None
    specs: list[PromptSpec] = []
    for line, row in rows[1:]:
        prompt = row[pi] if pi < len(row) else ""
        subject = row[si] if si is not None and si < len(row) else None
        specs.append(_make_spec(prompt, subject, f"row {line} of {path}"))
    return specs


def _read_structured(path: Path) -> list[PromptSpec]:
    """YAML or JSON holding a list of strings or {prompt, subject} mappings."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text) if text.strip() else None
        else:
            import yaml  # local: only prompt files need it

            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError
        raise config_error(f"prompt set: cannot parse {path}: {one_line(str(e))}; fix the file syntax") from e
    if data is None:
        return []
    if not isinstance(data, list):
        raise config_error(
            f"prompt set: {path} must hold a list of prompts, got {type(data).__name__}; "
            "write a top-level list of strings or {prompt, subject} mappings"
        )
    return _from_items(data, str(path))


def load_prompts(source: str | Path | list) -> list[PromptSpec]:
    """Load ``builtin:<name>``, a .txt/.csv/.yaml/.json file, or an inline (Hydra) list of prompts."""
    origin: str
    if isinstance(source, str) and source.strip().startswith(BUILTIN_PREFIX):
        name = source.strip()[len(BUILTIN_PREFIX) :].strip()
        if name not in BUILTIN_PROMPT_SETS:
            valid = ", ".join(BUILTIN_PREFIX + n for n in builtin_prompt_sets())
            raise config_error(f"prompt set: unknown built-in prompt set {source.strip()!r}; use one of: {valid}")
        return list(BUILTIN_PROMPT_SETS[name])

    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        origin = str(path)
        if not path.is_file():
            raise config_error(
                f"prompt set: file not found: {path}; pass an existing {'/'.join(PROMPT_EXTENSIONS)} file, "
                "a list of prompts, or builtin:<name> "
                f"({', '.join(BUILTIN_PREFIX + n for n in builtin_prompt_sets())})"
            )
        ext = path.suffix.lower()
        if ext not in PROMPT_EXTENSIONS:
            raise config_error(
                f"prompt set: unsupported file extension {ext or '(none)'!r} for {path}; "
                f"use one of {', '.join(PROMPT_EXTENSIONS)}"
            )
        try:
            if ext == ".txt":
                specs = _read_txt(path)
            elif ext == ".csv":
                specs = _read_csv(path)
            else:
                specs = _read_structured(path)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise config_error(f"prompt set: cannot read {path}: {e}; save it as UTF-8 text") from e
    else:
        try:
            items = list(source)  # list, tuple or OmegaConf ListConfig
        except TypeError as e:
            raise config_error(
                f"prompt set: unsupported source of type {type(source).__name__}; "
                "pass builtin:<name>, a file path or a list of prompts"
            ) from e
        origin = "the prompt list"
        specs = _from_items(items, origin)

    if not specs:
        raise config_error(f"prompt set is empty: {origin}; add at least one prompt")
    return specs
