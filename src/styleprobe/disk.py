"""Writing to disk so that nothing half written is ever read (a file: `atomic_write`; a folder: `build_once`), file
digests, and where caches live. Every writer of results, caches and trained weights goes through these."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """Hash file bytes once per (path, mtime, size): a changed file gets a new key, so no stale hash."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """Short sha256 of a file's bytes (cached per path, mtime and size)."""
    st = os.stat(path)
    return _file_digest(str(path), st.st_mtime_ns, st.st_size)


def default_cache_dir() -> Path:
    """Where generated built-ins live: ``$STYLEPROBE_CACHE`` if set, else ``~/.cache/styleprobe``."""
    env = os.environ.get("STYLEPROBE_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "styleprobe"


#: This machine's name as it appears in temporary and part file names (several hosts may write one folder).
HOST = socket.gethostname().replace(".", "_")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via `write(tmp)` to a temp file beside `path`, then rename; nothing partial remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{HOST}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_once(root: Path, build: Callable[[Path], None], info: dict[str, Any] | None = None,
               marker: str = "COMPLETE") -> Path:
    """Return `root`, first running `build(tmp)` into a temporary folder beside it, renamed to `root`, if `root` lacks
    its `marker` file. The marker is written last (holding `info`; or by `build` itself when `info` is None), so a
    killed build is never taken for a finished one; a racing process that finished first keeps its folder, and an
    incomplete folder left by a killed one is replaced."""
    if (root / marker).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        build(tmp)
        if info is not None:
            (tmp / marker).write_text(json.dumps(info))
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / marker).exists():  # a stale, incomplete folder: replace it
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
