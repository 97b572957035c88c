"""Tests for styleprobe.data: built-in generation, manifest loading, prompt formats, validation messages."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleprobe import disk
from styleprobe.data import drawing, style_sets
from styleprobe.data.prompt_sets import PromptSpec, builtin_prompt_sets, load_prompts
from styleprobe.data.style_sets import StyleReference, builtin_style_sets, load_style_set
from styleprobe.disk import default_cache_dir
from styleprobe.errors import ConfigError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch the real ~/.cache while testing."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLEPROBE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def shapes_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[StyleReference], list[StyleReference]]:
    """Generate the full built-in set into two separate caches once (generation is the slow part)."""
    a = load_style_set("builtin:shapes", cache_dir=tmp_path_factory.mktemp("cache_a"))
    b = load_style_set("builtin:shapes", cache_dir=tmp_path_factory.mktemp("cache_b"))
    return a, b


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10), mode: str = "RGB") -> Path:
    """Write a small real image so validation has something readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), colour if mode == "RGB" else colour[0]).save(path)
    return path


def _corrupt_png(path: Path, *, fix_crc: bool) -> Path:
    """Flip a byte in the IDAT chunk: with the CRC fixed only decoding (load) notices; without it verify() does."""
    buf = io.BytesIO()
    Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    i = raw.index(b"IDAT")
    (n,) = struct.unpack(">I", raw[i - 4 : i])
    if fix_crc:
        raw[i + 4 + n // 2] ^= 0xFF
        raw[i + 4 + n : i + 8 + n] = struct.pack(">I", zlib.crc32(bytes(raw[i : i + 4 + n])))
    else:
        raw[i + 4 + n] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _manifest(folder: Path, text: str) -> Path:
    """Write a manifest.csv verbatim (tests control every byte, including broken headers)."""
    folder.mkdir(parents=True, exist_ok=True)
    m = folder / "manifest.csv"
    m.write_text(text, encoding="utf-8")
    return m


def _config_error(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """Call, expect ConfigError, and check the one-line contract that every message must honour."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.strip(), "error message must not be empty"
    return msg


# --------------------------------------------------------------------------------------------
# Built-in style sets
# --------------------------------------------------------------------------------------------


def test_builtin_names_listed() -> None:
    assert {"shapes", "shapes_small"} <= set(builtin_style_sets())
    assert {"objects", "objects_small"} <= set(builtin_prompt_sets())


def test_builtin_shapes_deterministic_across_cache_dirs(shapes_dirs) -> None:  # type: ignore[no-untyped-def]
    a, b = shapes_dirs
    assert len(a) == len(b) == 4
    assert a[0].image.parent != b[0].image.parent
    for ra, rb in zip(a, b):
        assert ra.image.read_bytes() == rb.image.read_bytes()
        assert ra.digest == rb.digest
        assert (ra.style, ra.content) == (rb.style, rb.content)
    ma = a[0].image.parent / "manifest.csv"
    mb = b[0].image.parent / "manifest.csv"
    assert ma.read_bytes() == mb.read_bytes()


def test_builtin_shapes_images_and_labels(shapes_dirs) -> None:  # type: ignore[no-untyped-def]
    refs, _ = shapes_dirs
    assert len({r.style for r in refs}) == 4
    assert len({r.content for r in refs}) == 4
    means = []
    for r in refs:
        assert r.image.is_absolute() and r.image.suffix == ".png"
        assert r.content.startswith("a ") and len(r.content.split()) <= 4
        with Image.open(r.image) as raw:
            assert raw.format == "PNG" and raw.mode == "RGB" and raw.size == (256, 256)
        img = r.load()
        assert img.mode == "RGB" and img.size == (256, 256)
        means.append(np.asarray(img, dtype=np.float64).reshape(-1, 3).mean(axis=0))
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.linalg.norm(means[i] - means[j]) > 40, (refs[i].style, refs[j].style)


def test_builtin_shapes_small_is_prefix_of_shapes(shapes_dirs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    full, _ = shapes_dirs
    small = load_style_set("builtin:shapes_small", cache_dir=tmp_path / "c")
    assert len(small) == 2
    assert [(r.style, r.content, r.digest) for r in small] == [(r.style, r.content, r.digest) for r in full[:2]]
    assert small[0].image.parent == (tmp_path / "c" / "styles" / "shapes_small-v2").resolve()


def test_builtin_second_call_reuses_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c"
    first = load_style_set("builtin:shapes_small", cache_dir=cache)
    before = {r.image: r.image.stat().st_mtime_ns for r in first}

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not regenerate an existing built-in set")

    monkeypatch.setattr(style_sets, "_write_builtin", boom)
    second = load_style_set("builtin:shapes_small", cache_dir=cache)
    assert second == first
    assert {r.image: r.image.stat().st_mtime_ns for r in second} == before
    # Only the finished folder remains: no temp build dirs left next to it.
    assert sorted(p.name for p in (cache / "styles").iterdir()) == ["shapes_small-v2"]


def test_builtin_uses_env_cache_by_default(_cache_in_tmp: Path) -> None:
    assert default_cache_dir() == _cache_in_tmp
    refs = load_style_set("builtin:shapes_small")
    assert refs[0].image.parent == (_cache_in_tmp / "styles" / "shapes_small-v2").resolve()


def test_default_cache_dir_falls_back_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STYLEPROBE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "styleprobe"
    monkeypatch.setenv("STYLEPROBE_CACHE", "")
    assert default_cache_dir() == tmp_path / ".cache" / "styleprobe"


def test_killed_build_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c"
    real_pastel = drawing._SHAPES[1][4]
    calls = {"n": 0}

    def dies_midway() -> Image.Image:
        calls["n"] += 1
        raise KeyboardInterrupt  # like Ctrl-C after the first image was written

    patched = (drawing._SHAPES[0], drawing._SHAPES[1][:4] + (dies_midway,))
    monkeypatch.setitem(drawing.BUILTIN_STYLE_SETS, "shapes_small", patched)
    with pytest.raises(KeyboardInterrupt):
        load_style_set("builtin:shapes_small", cache_dir=cache)
    assert calls["n"] == 1
    assert list((cache / "styles").iterdir()) == []

    monkeypatch.setitem(drawing.BUILTIN_STYLE_SETS, "shapes_small", (drawing._SHAPES[0], drawing._SHAPES[1][:4] + (real_pastel,)))
    assert len(load_style_set("builtin:shapes_small", cache_dir=cache)) == 2


def test_race_loser_discards_its_build(tmp_path: Path) -> None:
    target = tmp_path / "shapes-v1"

    def build(tmp: Path) -> None:  # another process finishes first, while this one builds
        target.mkdir()
        (target / "manifest.csv").write_text("winner", encoding="utf-8")
        (tmp / "manifest.csv").write_text("loser", encoding="utf-8")

    assert disk.build_once(target, build, marker="manifest.csv") == target
    assert (target / "manifest.csv").read_text(encoding="utf-8") == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["shapes-v1"]  # the loser's temporary folder is gone


def test_damaged_stale_target_is_rebuilt(tmp_path: Path) -> None:
    stale = tmp_path / "c" / "styles" / "shapes_small-v2"
    stale.mkdir(parents=True)
    (stale / "junk.png").write_text("half", encoding="utf-8")  # no manifest: not a finished build
    refs = load_style_set("builtin:shapes_small", cache_dir=tmp_path / "c")
    assert len(refs) == 2
    assert not (stale / "junk.png").exists()


def test_unknown_builtin_style_set_lists_valid() -> None:
    msg = _config_error(load_style_set, "builtin:nope")
    assert "nope" in msg and "builtin:shapes" in msg and "builtin:shapes_small" in msg


# --------------------------------------------------------------------------------------------
# Manifest style sets
# --------------------------------------------------------------------------------------------


def test_manifest_folder_with_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _png(root / "imgs" / "a.png")
    _png(root / "b.png", (10, 200, 10))
    _manifest(root, "image,style,content,notes\nimgs/a.png,watercolor,a boat,x\n b.png , oil , a tree ,\n")
    refs = load_style_set(root)
    assert refs == [
        StyleReference((root / "imgs" / "a.png").resolve(), "watercolor", "a boat"),
        StyleReference((root / "b.png").resolve(), "oil", "a tree"),
    ]
    # Same result via the manifest file itself and via a str path from another cwd.
    assert load_style_set(root / "manifest.csv") == refs
    assert load_style_set(str(root / "manifest.csv")) == refs


def test_manifest_absolute_image_path_and_column_order(tmp_path: Path) -> None:
    img = _png(tmp_path / "elsewhere" / "x.png")
    m = _manifest(tmp_path / "set", f"content,image,style\na dog,{img},pixel\n")
    (ref,) = load_style_set(m)
    assert ref.image == img.resolve() and ref.style == "pixel" and ref.content == "a dog"


def test_load_converts_to_rgb(tmp_path: Path) -> None:
    _png(tmp_path / "g.png", (77, 0, 0), mode="L")
    Image.new("RGBA", (4, 4), (1, 2, 3, 128)).save(tmp_path / "t.png")
    _manifest(tmp_path, "image,style,content\ng.png,grey,a blob\nt.png,alpha,a blob\n")
    for ref in load_style_set(tmp_path):
        assert ref.load().mode == "RGB"


def test_digest_tracks_image_bytes(tmp_path: Path) -> None:
    p = _png(tmp_path / "a.png", (1, 2, 3))
    ref = StyleReference(p.resolve(), "s", "a thing")
    d1 = ref.digest
    assert len(d1) == 16 and all(c in "0123456789abcdef" for c in d1)
    assert ref.digest == d1
    Image.new("RGB", (16, 16), (250, 2, 3)).save(p)  # different size too, so the cache key changes
    assert ref.digest != d1
    twin = _png(tmp_path / "b.png", (1, 2, 3))
    assert StyleReference(twin, "s", "a thing").digest == d1  # keyed by content, not path


@pytest.mark.parametrize(
    ("case", "keywords"),
    [
        ("missing_source", ["not found", "manifest.csv", "builtin:shapes"]),
        ("folder_without_manifest", ["no manifest.csv", "image,style,content"]),
        ("non_csv_file", ["not a manifest .csv"]),
        ("empty_file", ["empty"]),
        ("header_only", ["empty", "one row per reference"]),
        ("missing_columns", ["missing column(s) style", "found: image, name", "image,style (and, for most methods, content)"]),
        ("empty_style", ["empty style cell", "row 2"]),
        ("empty_image", ["empty image cell", "row 2"]),
        ("image_missing", ["reference image not found", "nothere.png", "row 2", "fix the path"]),
        ("text_as_png", ["not a readable image", "fake.png", "row 2"]),
        ("truncated_png", ["not a readable image", "cut.png"]),
        ("bad_crc_png", ["not a readable image", "crc.png"]),
        ("bad_pixel_data_png", ["not a readable image", "data.png"]),
        ("newline_in_path", ["reference image not found", "bad name.png"]),
    ],
)
def test_style_set_validation_errors(case: str, keywords: list[str], tmp_path: Path) -> None:
    root = tmp_path / "set"
    root.mkdir()
    _png(root / "ok.png")
    source: Path = root
    if case == "missing_source":
        source = tmp_path / "does_not_exist"
    elif case == "folder_without_manifest":
        pass
    elif case == "non_csv_file":
        source = root / "ok.png"
    elif case == "empty_file":
        _manifest(root, "")
    elif case == "header_only":
        _manifest(root, "image,style,content\n")
    elif case == "missing_columns":
        _manifest(root, "image,name\nok.png,x\n")
    elif case == "empty_style":
        _manifest(root, "image,style,content\nok.png, ,a cat\n")
    elif case == "empty_image":
        _manifest(root, "image,style,content\n,oil,a cat\n")
    elif case == "image_missing":
        _manifest(root, "image,style,content\nnothere.png,oil,a cat\n")
    elif case == "text_as_png":
        (root / "fake.png").write_text("definitely not a png\n", encoding="utf-8")
        _manifest(root, "image,style,content\nfake.png,oil,a cat\n")
    elif case == "truncated_png":
        Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(root / "full.png")
        raw = (root / "full.png").read_bytes()
        (root / "cut.png").write_bytes(raw[: len(raw) // 2])
        _manifest(root, "image,style,content\ncut.png,oil,a cat\n")
    elif case == "bad_crc_png":
        _corrupt_png(root / "crc.png", fix_crc=False)  # only verify() catches this
        _manifest(root, "image,style,content\ncrc.png,oil,a cat\n")
    elif case == "bad_pixel_data_png":
        _corrupt_png(root / "data.png", fix_crc=True)  # only a full decode catches this
        _manifest(root, "image,style,content\ndata.png,oil,a cat\n")
    elif case == "newline_in_path":
        _manifest(root, 'image,style,content\n"bad\nname.png",oil,a cat\n')
    msg = _config_error(load_style_set, source)
    assert msg.startswith("style set"), msg
    for kw in keywords:
        assert kw in msg, (kw, msg)


def test_content_and_style_prompt_are_optional(tmp_path: Path) -> None:
    """A blank content label is allowed (the method that needs one says so); style_prompt is read when given."""
    root = tmp_path / "set"
    root.mkdir()
    _png(root / "ok.png")
    _manifest(root, "image,style,content,style_prompt\nok.png,oil,a cat,thick impasto oil painting\nok.png,oil,,\n")
    with_label, without = load_style_set(root)
    assert (with_label.content, with_label.style_prompt) == ("a cat", "thick impasto oil painting")
    assert (without.content, without.style_prompt) == ("", "")
    _manifest(root, "image,style\nok.png,ink\n")
    (only,) = load_style_set(root)
    assert (only.style, only.content, only.style_prompt) == ("ink", "", "")


def test_validation_does_not_import_torch() -> None:
    code = (
        "import sys; import styleprobe.data.style_sets, styleprobe.data.prompt_sets, styleprobe.data.set_names; "
        "assert 'torch' not in sys.modules, 'data/ must stay torch-free'; "
        "assert 'omegaconf' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------
# Prompt sets
# --------------------------------------------------------------------------------------------


def test_builtin_prompts() -> None:
    objs = load_prompts("builtin:objects")
    assert len(objs) == 6
    assert len({p.subject for p in objs}) == 6
    assert {p.subject for p in objs} >= {"a cat", "a bicycle", "a lighthouse", "a teapot"}
    for p in objs:
        assert p.prompt.startswith(p.subject) and p.subject.startswith("a ")
    # Subjects must not overlap the built-in style contents, or content leakage is unmeasurable.
    shapes = {c for _, _, c, _, _ in drawing._SHAPES}
    assert not shapes & {p.subject for p in objs}
    assert load_prompts("builtin:objects_small") == objs[:2]
    objs.append(PromptSpec("x", "x"))
    assert len(load_prompts("builtin:objects")) == 6  # callers cannot mutate the built-in


def test_prompts_txt(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("# header comment\n\na cat in a garden | a cat\n  a red car  \n   # indented comment\n", "utf-8")
    assert load_prompts(f) == [PromptSpec("a cat in a garden", "a cat"), PromptSpec("a red car", "a red car")]


def test_prompts_csv(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text('subject,prompt\na cat,"a cat, sleeping"\n,a dog\n', "utf-8")
    assert load_prompts(str(f)) == [PromptSpec("a cat, sleeping", "a cat"), PromptSpec("a dog", "a dog")]
    g = tmp_path / "q.csv"
    g.write_text("prompt\na boat\n", "utf-8")
    assert load_prompts(g) == [PromptSpec("a boat", "a boat")]


@pytest.mark.parametrize("ext", [".yaml", ".yml", ".json"])
def test_prompts_yaml_json(ext: str, tmp_path: Path) -> None:
    items = ["a boat on a lake", {"prompt": "a fox in snow", "subject": "a fox"}, {"prompt": "a tree"}]
    f = tmp_path / f"p{ext}"
    f.write_text(json.dumps(items), "utf-8")  # JSON is valid YAML, so one payload tests both parsers
    assert load_prompts(f) == [
        PromptSpec("a boat on a lake", "a boat on a lake"),
        PromptSpec("a fox in snow", "a fox"),
        PromptSpec("a tree", "a tree"),
    ]


def test_prompts_yaml_block_style(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("- a cat\n- prompt: a photo of a dog\n  subject: a dog\n", "utf-8")
    assert load_prompts(f) == [PromptSpec("a cat", "a cat"), PromptSpec("a photo of a dog", "a dog")]


def test_prompts_python_and_omegaconf_lists() -> None:
    from omegaconf import OmegaConf

    raw = ["a cat", {"prompt": "a photo of a dog", "subject": "a dog"}, PromptSpec("a ship", "a ship")]
    expected = [PromptSpec("a cat", "a cat"), PromptSpec("a photo of a dog", "a dog"), PromptSpec("a ship", "a ship")]
    assert load_prompts(raw) == expected
    cfg = OmegaConf.create({"prompts": raw[:2]})
    assert load_prompts(cfg.prompts) == expected[:2]
    assert load_prompts(("a cat",)) == expected[:1]


@pytest.mark.parametrize(
    ("make", "keywords"),
    [
        (lambda d: [], ["prompt set is empty", "add at least one prompt"]),
        (lambda d: _write(d / "e.txt", "# only a comment\n\n"), ["prompt set is empty", "e.txt"]),
        (lambda d: _write(d / "e.yaml", ""), ["prompt set is empty"]),
        (lambda d: _write(d / "e.csv", "prompt,subject\n"), ["prompt set is empty"]),
        (lambda d: ["a cat", "   "], ["empty prompt", "entry 2"]),
        (lambda d: _write(d / "w.csv", "prompt\na cat\n  ,a dog\n"), ["empty prompt", "row 3"]),
        (lambda d: _write(d / "w.txt", "a cat\n | a dog\n"), ["empty prompt", "line 2"]),
        (lambda d: d / "missing.txt", ["file not found", "missing.txt", "builtin:objects"]),
        (lambda d: "builtin:animals", ["unknown built-in prompt set", "builtin:objects", "builtin:objects_small"]),
        (lambda d: _write(d / "p.md", "a cat\n"), ["unsupported file extension", ".md", ".txt"]),
        (lambda d: [{"subject": "a cat"}], ["missing 'prompt' key", "entry 1"]),
        (lambda d: [{"prompt": "a cat", "subjet": "a cat"}], ["unknown key(s) subjet", "prompt, subject"]),
        (lambda d: [42], ["unsupported entry", "int"]),
        (lambda d: _write(d / "n.yaml", "- prompt: 42\n"), ["prompt must be text", "int"]),
        (lambda d: _write(d / "m.yaml", "prompt: a cat\n"), ["must hold a list"]),
        (lambda d: _write(d / "bad.json", "[\"a cat\",\n"), ["cannot parse", "bad.json"]),
        (lambda d: _write(d / "h.csv", "text\na cat\n"), ["no 'prompt' column", "found: text"]),
    ],
)
def test_prompt_validation_errors(make, keywords: list[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = _config_error(load_prompts, make(tmp_path))
    assert msg.startswith("prompt set"), msg
    for kw in keywords:
        assert kw in msg, (kw, msg)


def _write(path: Path, text: str) -> Path:
    """Create a prompt file with exact content."""
    path.write_text(text, encoding="utf-8")
    return path


def test_file_sources_accept_str_and_path_equally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "p.txt", "a cat\n")
    monkeypatch.chdir(tmp_path)
    assert load_prompts("p.txt") == load_prompts(tmp_path / "p.txt") == [PromptSpec("a cat", "a cat")]
