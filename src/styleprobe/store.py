"""The results store: images and row files of one sweep, written atomically.

    <results_dir>/images/<key[:2]>/<key>.png
    <results_dir>/rows/<run_id>-<batch>.parquet   one file per generated batch
    <results_dir>/runs/<run_id>/config.yaml       the full config of every run

Every file is written to a hidden temp name and renamed into place, images before the row file that
names them, so a row means its image exists and a run killed mid-way loses at most the batch in flight.
Each job writes only files carrying its own run id, so parallel jobs (shards) never write the same file;
the table is the union of the row files, with one row per key.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

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


class Store:
    """Reads and writes one sweep's results folder."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.images = self.root / "images"
        self.rows = self.root / "rows"
        self.runs = self.root / "runs"

    def image_path(self, key: str) -> Path:
        return self.images / key[:2] / f"{key}.png"

    def row_files(self) -> list[Path]:
        return sorted(self.rows.glob("[!.]*.parquet")) if self.rows.exists() else []

    def done_keys(self) -> set[str]:
        """Keys with a row (and so an image)."""
        keys: set[str] = set()
        for f in self.row_files():
            keys.update(pd.read_parquet(f, columns=["key"])["key"])
        return keys

    def table(self) -> pd.DataFrame:
        """One row per key, from every row file; `image_path` is relative to the results folder."""
        files = self.row_files()
        if not files:
            return pd.DataFrame()
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return df.drop_duplicates("key", keep="last").reset_index(drop=True)

    def write_batch(self, rows: Sequence[dict[str, Any]], images: Sequence[Image.Image], run_id: str, batch: int) -> Path:
        """Images first, then the row file naming them."""
        for row, image in zip(rows, images, strict=True):
            path = self.image_path(row["key"])
            atomic_write(path, lambda tmp, im=image: im.save(tmp, format="PNG"))
            row["image_path"] = path.relative_to(self.root).as_posix()
            row["run_id"] = run_id
        out = self.rows / f"{run_id}-{batch:05d}.parquet"
        frame = pd.DataFrame(list(rows))
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
        return out

    def clean_stale_temp(self) -> int:
        """Remove temp files left by killed processes of this host (live ones are left alone)."""
        removed = 0
        for folder in (self.images, self.rows):
            if not folder.exists():
                continue
            for tmp in folder.rglob(f".*.{HOST}.*.tmp"):
                pid = tmp.name.rsplit(".", 2)[-2]
                if pid.isdigit() and not _alive(int(pid)):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
