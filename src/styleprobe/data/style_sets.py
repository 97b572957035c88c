"""Style sets: reference images, each with the name of its style, a short label of what it depicts (`content`: used by
IP-Adapter's content subtraction, StyleAligned's inversion caption and the leakage metrics; may be blank where
nothing needs it), optionally a longer style description (`style_prompt`, for methods that write the style into the
prompt) and a LoRA trained elsewhere on that image (`b_lora`: a file, a folder holding pytorch_lora_weights.safetensors,
or a Hub repository `owner/name[/weight_name]`, used by B-LoRA instead of training one).
Cheap (PIL + numpy, no torch), so a bad manifest fails in well under a second with a one-line ``ConfigError``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from styleprobe.data.drawing import BUILTIN_STYLE_SETS, Entry
from styleprobe.disk import build_once, default_cache_dir, file_digest
from styleprobe.errors import ConfigError, config_error, one_line

BUILTIN_PREFIX = "builtin:"


MANIFEST_NAME = "manifest.csv"


MANIFEST_COLUMNS: tuple[str, ...] = ("image", "style", "content")


REQUIRED_COLUMNS: tuple[str, ...] = ("image", "style")  # content may be blank: only some methods and metrics need it


OPTIONAL_COLUMNS: tuple[str, ...] = ("content", "style_prompt", "b_lora")


# Bump when the generated pictures change, so old caches are never silently reused.
_BUILTIN_VERSION = "v2"  # v2: the manifest gained style_prompt (same images, same digests)


@dataclass(frozen=True)
class StyleReference:
    """One style reference image; ``content`` says what it shows ("" when unknown), ``style_prompt`` describes its
    style at more length than ``style`` for methods that put the style into the prompt (StyleAligned)."""

    image: Path
    style: str
    content: str
    style_prompt: str = ""
    b_lora: str = ""  # a LoRA trained elsewhere on this image: a local path, or "hub:owner/name[/weight_name]"

    @property
    def digest(self) -> str:
        """Short sha256 of the image bytes, so results can be keyed by the picture, not its path."""
        return file_digest(self.image)

    def load(self) -> Image.Image:
        """Decode the reference as RGB (IP-Adapter and CLIP expect three channels)."""
        with Image.open(self.image) as im:
            return im.convert("RGB")


def builtin_name(source: Any) -> str | None:
    if isinstance(source, str) and source.strip().startswith(BUILTIN_PREFIX):
        return source.strip()[len(BUILTIN_PREFIX):].strip()
    return None


_TOLD_UNLIKE_TOY: set[str] = set()  # style sets already warned about in this process: one warning per run


def warn_if_unlike_toy(style_set: str, model_base: str) -> None:
    """Warn, once, when references other than the toy's own are used with the toy model: its image encoder and
    IP-Adapter know only its eight styles, so a reference unlike them comes out as the nearest of them (red stripes
    as hatched ink) without any error, and the findings are about those eight styles, not about the references."""
    from styleprobe.models.toy.world import STYLES

    if not str(model_base).startswith("toy:") or builtin_name(style_set) == "toy" or str(style_set) in _TOLD_UNLIKE_TOY:
        return
    _TOLD_UNLIKE_TOY.add(str(style_set))
    logging.getLogger("styleprobe").warning(
        "model=toy with the style set %s: the toy world knows only its eight styles (%s), so each reference is "
        "drawn as the nearest of them (red stripes may come out as hatched ink): the findings are about the toy's "
        "eight styles, not about these references; use a real model (e.g. model=sdxl) for them",
        style_set, ", ".join(STYLES),
    )


def builtin_style_sets() -> list[str]:
    """Names usable as ``builtin:<name>`` style sets."""
    return sorted(BUILTIN_STYLE_SETS)


def _write_builtin(folder: Path, entries: Iterable[Entry]) -> None:
    """Render every image and the manifest into ``folder`` (a private temp dir)."""
    rows: list[tuple[str, str, str, str]] = []
    for filename, style, content, style_prompt, make in entries:
        make().save(folder / filename, format="PNG")  # no metadata, so bytes are reproducible
        rows.append((filename, style, content, style_prompt))
    with open(folder / MANIFEST_NAME, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow((*MANIFEST_COLUMNS, "style_prompt"))
        w.writerows(rows)


def _materialize_builtin(name: str, cache_dir: Path) -> Path:
    """Generate the built-in set once (`disk.build_once`: the manifest is written last, so a killed or racing build
    is harmless)."""
    target = cache_dir / "styles" / f"{name}-{_BUILTIN_VERSION}"
    try:
        return build_once(target, lambda tmp: _write_builtin(tmp, BUILTIN_STYLE_SETS[name]), marker=MANIFEST_NAME)
    except OSError as e:
        raise config_error(
            f"style set: cannot write built-in style set to {target}: {e}; "
            "set STYLEPROBE_CACHE to a writable folder"
        ) from e


def _check_image(path: Path, where: str) -> None:
    """Fail now on a file PIL cannot decode, instead of minutes later inside a sweep."""
    try:
        with Image.open(path) as im:
            im.verify()  # structural check (CRCs, chunk layout)
        with Image.open(path) as im:
            im.load()  # verify() does not decode pixels; truncated data only shows up here
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        reason = one_line(str(e)) or type(e).__name__
        raise config_error(
            f"style set: reference image is not a readable image: {path} ({where}): {reason}; "
            "replace it with a valid PNG/JPEG or fix the path in the manifest"
        ) from e


def _lora_location(cell: str, folder: Path, where: str) -> str:
    """A manifest's `b_lora` cell as an absolute path (relative to the manifest) or `hub:owner/name[/weight_name]`."""
    if not cell:
        return ""
    path = Path(cell).expanduser()
    path = path if path.is_absolute() else folder / path
    if path.exists():
        return str(path.resolve())
    parts = cell.split("/")
    repo = len(parts) == 2 and not parts[1].endswith(".safetensors")
    repo_file = len(parts) == 3 and parts[2].endswith(".safetensors")
    if all(parts) and not cell.startswith((".", "~")) and (repo or repo_file):
        return f"hub:{cell}"
    raise config_error(f"style set: b_lora {cell!r} ({where}) is neither a file or folder beside the manifest nor a Hub "
                 f"repository (owner/name or owner/name/weight_name.safetensors); fix the path")


def _read_manifest(manifest: Path) -> list[StyleReference]:
    """Parse and fully validate a manifest; image paths are relative to the manifest's folder."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise config_error(
            f"style set: cannot read manifest {manifest}: {e}; save it as a UTF-8 CSV with columns image,style,content"
        ) from e
    rows = [(n, r) for n, r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise config_error(
            f"style set: manifest is empty: {manifest}; add a header row image,style,content and one row per reference image"
        )
    _, header = rows[0]
    header = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise config_error(
            f"style set: manifest {manifest} is missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(h for h in header if h) or 'none'}); "
            f"the header row must include {','.join(REQUIRED_COLUMNS)} (and, for most methods, content)"
        )
    idx = {c: header.index(c) for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in header}
    if len(rows) == 1:
        raise config_error(
            f"style set: manifest is empty (header only): {manifest}; add one row per reference image (image,style,content)"
        )
    folder = manifest.parent
    refs: list[StyleReference] = []
    for line, row in rows[1:]:
        where = f"row {line} of {manifest}"
        cells = {c: (row[i].strip() if i < len(row) else "") for c, i in idx.items()}
        for col in REQUIRED_COLUMNS:
            if not cells[col]:
                raise config_error(f"style set: empty {col} cell in {where}; fill in the {col} column for every row")
        image = Path(cells["image"]).expanduser()
        if not image.is_absolute():
            image = folder / image
        image = image.resolve()
        if not image.is_file():
            raise config_error(
                f"style set: reference image not found: {image} ({where}); fix the path in the manifest or add the file"
            )
        _check_image(image, where)
        refs.append(StyleReference(image=image, style=cells["style"], content=cells.get("content", ""),
                                   style_prompt=cells.get("style_prompt", ""),
                                   b_lora=_lora_location(cells.get("b_lora", ""), folder, where)))
    return refs


def load_style_set(source: str | Path, cache_dir: Path | None = None) -> list[StyleReference]:
    """Load ``builtin:<name>``, a folder with manifest.csv, or a manifest .csv; validated up front."""
    if isinstance(source, str) and source.strip().startswith(BUILTIN_PREFIX):
        name = source.strip()[len(BUILTIN_PREFIX) :].strip()
        if name not in BUILTIN_STYLE_SETS:
            valid = ", ".join(BUILTIN_PREFIX + n for n in builtin_style_sets())
            raise config_error(f"style set: unknown built-in style set {source.strip()!r}; use one of: {valid}")
        folder = _materialize_builtin(name, Path(cache_dir) if cache_dir is not None else default_cache_dir())
        try:
            return _read_manifest(folder / MANIFEST_NAME)
        except ConfigError as e:
            raise config_error(f"{e} (built-in cache {folder} looks damaged: delete that folder to regenerate it)") from e

    path = Path(source).expanduser()
    if not path.exists():
        valid = ", ".join(BUILTIN_PREFIX + n for n in builtin_style_sets())
        raise config_error(
            f"style set: path not found: {path}; pass a folder containing {MANIFEST_NAME}, a manifest .csv file, "
            f"or a built-in set ({valid})"
        )
    if path.is_dir():
        manifest = path / MANIFEST_NAME
        if not manifest.is_file():
            raise config_error(
                f"style set: no {MANIFEST_NAME} in folder {path}; add a {MANIFEST_NAME} with columns image,style,content"
            )
    else:
        if path.suffix.lower() != ".csv":
            raise config_error(
                f"style set: not a manifest .csv file: {path}; pass a folder containing {MANIFEST_NAME} or a .csv manifest"
            )
        manifest = path
    return _read_manifest(manifest.resolve())
