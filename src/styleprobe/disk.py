"""Writing to disk so that nothing half written is ever read, file digests, and where caches live.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path


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
