"""The results store: images and row files of one sweep, written atomically.

    <results_dir>/images/<key[:2]>/<key>.png
    <results_dir>/rows/<run_id>-<batch>.parquet   one file per generated batch
    <results_dir>/runs/<run_id>/config.yaml       the full config of every run (sweep or scoring)
    <results_dir>/references/<digest><suffix>     a copy of each style reference, so scoring runs anywhere
    <results_dir>/scores/<metric>/metric.yaml     what the metric is (scorer, model, options)
    <results_dir>/scores/<metric>/<run_id>-<n>.parquet   key + the metric's columns, one file per scored batch
    <results_dir>/artefacts/<kind>/<key[:2]>/<key>.safetensors   per-reference work of a method (e.g. inverted
                                                  latents), keyed by everything that determines it
    <results_dir>/artefacts/<kind>/<key[:2]>/<key>/  the same as a folder, for artefacts in another tool's format
                                                  (a trained LoRA as diffusers saves it, with its checkpoint)

Every file is written to a hidden temp name and renamed into place, images before the row file that
names them, so a row means its image exists and a run killed mid-way loses at most the batch in flight.
An artefact's file name is its key, so two jobs that make the same one write the same bytes, and a rerun
finds it and computes nothing. Each job writes only files carrying its own run id, so parallel jobs (shards)
never write the same row or score file;
the table is the union of the row files, with one row per key, joined by key with every metric's scores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
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
        self.scores = self.root / "scores"
        self.references = self.root / "references"
        self.artefacts = self.root / "artefacts"

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

    def rows_table(self) -> pd.DataFrame:
        """The generated rows only: one per key; `image_path` is relative to the results folder."""
        files = self.row_files()
        if not files:
            return pd.DataFrame()
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return df.drop_duplicates("key", keep="last").reset_index(drop=True)

    def table(self) -> pd.DataFrame:
        """One row per key with every metric's columns (empty where a metric has not scored that row yet)."""
        df = self.rows_table()
        if df.empty:
            return df
        for metric in self.metrics():
            scores = self.metric_scores(metric)
            if not scores.empty:
                df = df.merge(scores, on="key", how="left")
        return df

    def metrics(self) -> list[str]:
        """Names of the metrics with a score folder."""
        return sorted(p.parent.name for p in self.scores.glob("*/metric.yaml")) if self.scores.exists() else []

    def score_files(self, metric: str) -> list[Path]:
        folder = self.scores / metric
        return sorted(folder.glob("[!.]*.parquet")) if folder.exists() else []

    def metric_scores(self, metric: str) -> pd.DataFrame:
        """Key plus the metric's columns, one row per scored key."""
        files = self.score_files(metric)
        if not files:
            return pd.DataFrame()
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return df.drop_duplicates("key", keep="last").reset_index(drop=True)

    def scored_keys(self, metric: str) -> set[str]:
        keys: set[str] = set()
        for f in self.score_files(metric):
            keys.update(pd.read_parquet(f, columns=["key"])["key"])
        return keys

    def metric_identity(self, metric: str) -> dict[str, Any] | None:
        """What an existing metric folder was scored with, or None for a new metric."""
        path = self.scores / metric / "metric.yaml"
        if not path.exists():
            return None
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]

    def write_metric_identity(self, metric: str, identity: dict[str, Any]) -> None:
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.create(identity))
        atomic_write(self.scores / metric / "metric.yaml", lambda tmp: tmp.write_text(text))

    def write_scores(self, metric: str, frame: pd.DataFrame, run_id: str, batch: int) -> Path:
        out = self.scores / metric / f"{run_id}-{batch:05d}.parquet"
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
        return out

    def reference_copy(self, digest: str) -> Path | None:
        found = sorted(self.references.glob(f"{digest}.*")) if self.references.exists() else []
        return found[0] if found else None

    def save_reference(self, source: Path, digest: str) -> Path:
        """Keep a copy of a style reference (named by content digest) beside the results."""
        existing = self.reference_copy(digest)
        if existing is not None:
            return existing
        out = self.references / f"{digest}{source.suffix.lower() or '.png'}"
        atomic_write(out, lambda tmp: shutil.copyfile(source, tmp))
        return out

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

    def artefact_path(self, kind: str, key: str, suffix: str = ".safetensors") -> Path:
        return self.artefacts / kind / key[:2] / f"{key}{suffix}"

    def artefact_dir(self, kind: str, key: str) -> Path:
        """The folder of an artefact kept in another tool's layout; its files are written with `atomic_write`."""
        return self.artefacts / kind / key[:2] / key

    def has_artefact(self, kind: str, key: str) -> bool:
        return self.artefact_path(kind, key).is_file()

    def write_tensors(self, kind: str, key: str, tensors: dict[str, Any], metadata: dict[str, Any]) -> Path:
        """A keyed artefact of tensors, with what made it (and what it cost) as JSON-encoded metadata."""
        import json

        from safetensors.torch import save_file

        path = self.artefact_path(kind, key)
        meta = {k: json.dumps(v) for k, v in metadata.items()}
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=meta))
        return path

    def read_tensors(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The tensors and the decoded metadata of an artefact written by `write_tensors`."""
        import json

        from safetensors import safe_open

        with safe_open(str(self.artefact_path(kind, key)), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        return tensors, meta

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Hold `runs/.<name>.lock` while the block runs: yields True to the one holder, False to any other process
        meanwhile (it does not wait). The lock goes with its holder's process, so a killed holder blocks nobody."""
        import fcntl

        self.runs.mkdir(parents=True, exist_ok=True)
        with open(self.runs / f".{name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def clean_stale_temp(self) -> int:
        """Remove temp files left by killed processes of this host (live ones are left alone)."""
        removed = 0
        for folder in (self.images, self.rows, self.scores, self.references, self.artefacts):
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
