"""The results store: images and row files of one sweep, written atomically.

    <results_dir>/images/<key[:2]>/<key>.png
    <results_dir>/rows/<run_id>-<batch>.parquet   one file per generated batch ("part")
    <results_dir>/rows/0-compacted-<stamp>.parquet  the parts of earlier runs merged into one file (`compact`)
    <results_dir>/runs/<run_id>/config.yaml       the full config of every run (sweep or scoring)
    <results_dir>/references/<digest><suffix>     a copy of each style reference, so scoring runs anywhere
    <results_dir>/scores/<metric>/_metric.yaml    what the metric is (scorer, model, options); the `_` keeps plain
                                                  parquet readers of the folder off it (`metric.yaml` in older folders)
    <results_dir>/scores/<metric>/<run_id>-<n>.parquet   key + the metric's columns + run_id, one file per scored batch
    <results_dir>/scores/<metric>/0-compacted-<stamp>.parquet   merged as rows are
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

Reading is one pyarrow dataset scan per table (only the key column for a resume check), never a loop over files.
A key written twice keeps the row of the later run (`run_id` starts with the run's start time; every row and
score carries its run's id). `compact` merges a table's files into one at the end of a run, so a finished sweep
is read from one file per table: it merges a snapshot of the files, writes the result atomically, and only then
deletes what it merged, so a writer adding parts meanwhile loses nothing and a kill at any moment leaves a folder
that reads the same table (at worst with a row in two files, which the reader's last-write rule collapses).
Plain tools read the folders too: `pd.read_parquet("<results_dir>/rows")` (or `scores/<metric>`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from styleprobe.disk import HOST, atomic_write

if TYPE_CHECKING:  # imported where tables are read or written: `styleprobe --help` and config errors never wait
    import pandas as pd
    import pyarrow as pa
    from PIL import Image

#: A compacted file's name sorts before every part's (`<yyyymmdd>-...`), so tools that take a folder's schema from
#: its first file (pandas, pyarrow) see the compacted file's columns: the union of every merged part's.
COMPACTED_PREFIX = "0-compacted-"
#: A metric's identity file, then its name in folders written before plain parquet readers were supported.
IDENTITY_FILES = ("_metric.yaml", "metric.yaml")
#: Parquet metadata of a compacted file: run id -> when that run last wrote to the table (status reads speeds from it).
WRITTEN_KEY = b"styleprobe.written"
#: Columns whose every value may be None in one part (on the CPU) and typed in another (on a GPU).
TYPED_WHEN_EMPTY = {"peak_gpu_bytes": "int64"}


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
        return parquet_files(self.rows)

    def done_keys(self) -> set[str]:
        """Keys with a row (and so an image): one scan of the key column."""
        return set(scan(self.rows, ["key"]).column("key").to_pylist())

    def row_columns(self) -> list[str]:
        """The rows' columns (every file's, unified), read from the files' footers alone."""
        return schema(self.rows).names

    def rows_table(self) -> pd.DataFrame:
        """The generated rows only: one per key; `image_path` is relative to the results folder."""
        return latest_per_key(scan(self.rows))

    def table(self) -> pd.DataFrame:
        """One row per key with every metric's columns (empty where a metric has not scored that row yet)."""
        df = self.rows_table()
        if df.empty:
            return df
        for metric in self.metrics():
            scores = self.metric_scores(metric)
            if not scores.empty:
                df = df.merge(scores.drop(columns=["run_id"], errors="ignore"), on="key", how="left")
        return df

    def metrics(self) -> list[str]:
        """Names of the metrics with a score folder."""
        if not self.scores.exists():
            return []
        return sorted({p.parent.name for name in IDENTITY_FILES for p in self.scores.glob(f"*/{name}")})

    def score_files(self, metric: str) -> list[Path]:
        return parquet_files(self.scores / metric)

    def metric_scores(self, metric: str) -> pd.DataFrame:
        """Key plus the metric's columns (and the scoring run's `run_id`), one row per scored key."""
        return latest_per_key(scan(self.scores / metric))

    def scored_keys(self, metric: str) -> set[str]:
        return set(scan(self.scores / metric, ["key"]).column("key").to_pylist())

    def tables(self) -> list[Path]:
        """Every table's folder: the rows and each metric's scores."""
        return [self.rows, *(self.scores / m for m in self.metrics())]

    def compact(self) -> dict[str, tuple[int, int]]:
        """Merge each table's files into one (see `compact_folder`); table name -> (files before, after).

        One process compacts a results folder at a time; another that asks meanwhile returns {} at once."""
        with self.exclusive("compact") as mine:
            if not mine:
                return {}
            for metric in self.metrics():
                legacy = self.scores / metric / IDENTITY_FILES[1]
                if legacy.exists() and not (self.scores / metric / IDENTITY_FILES[0]).exists():
                    os.replace(legacy, self.scores / metric / IDENTITY_FILES[0])
            return {folder.relative_to(self.root).as_posix(): compact_folder(folder) for folder in self.tables()}

    def run_writes(self) -> dict[str, tuple[int, float]]:
        """Run id -> (rows it wrote, when it last wrote one): from the row parts and the compacted files' records."""
        files = self.row_files()
        counts = scan(self.rows, ["run_id"]).column("run_id").value_counts().to_pylist() if files else []
        last = last_writes(files)
        return {c["values"]: (int(c["counts"]), last[c["values"]]) for c in counts if c["values"] in last}

    def _metric_file(self, metric: str) -> dict[str, Any] | None:
        found = [self.scores / metric / name for name in IDENTITY_FILES if (self.scores / metric / name).exists()]
        if not found:
            return None
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(found[0]))  # type: ignore[return-value]

    def metric_identity(self, metric: str) -> dict[str, Any] | None:
        """What an existing metric folder was scored with, or None for a new metric (its roles are not part of it)."""
        data = self._metric_file(metric)
        return None if data is None else {k: v for k, v in data.items() if k != "roles"}

    def metric_roles(self, metric: str) -> dict[str, str] | None:
        """Each column of a metric -> its role ('leakage:lower'), as recorded when it was scored; None where older
        styleprobe recorded none (analysis then takes them from the scorer kind of the identity)."""
        data = self._metric_file(metric)
        roles = (data or {}).get("roles")
        return {str(k): str(v) for k, v in roles.items()} if isinstance(roles, dict) else None

    def write_metric_identity(self, metric: str, identity: dict[str, Any], roles: dict[str, str] | None = None) -> None:
        """`_metric.yaml`: the identity, and the roles of its columns (which a relabelling may rewrite, no rescoring)."""
        text = _metric_text(identity, roles)
        atomic_write(self.scores / metric / IDENTITY_FILES[0], lambda tmp: tmp.write_text(text))
        (self.scores / metric / IDENTITY_FILES[1]).unlink(missing_ok=True)

    def rename_metric(self, old: str, new: str, roles: dict[str, str]) -> None:
        """Move a metric's scores to a new name, columns renamed (`old`, `old_model` -> `new`, `new_model`), without
        rescoring: the new folder is complete before it appears, and the old one goes after."""
        source, target = self.scores / old, self.scores / new
        tmp = self.scores / f".{new}.{HOST}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        import pyarrow.parquet as pq

        names = {old: new, f"{old}_model": f"{new}_model"}
        for path in parquet_files(source):
            table = pq.read_table(path)
            pq.write_table(table.rename_columns([names.get(c, c) for c in table.column_names]), tmp / path.name)
        (tmp / IDENTITY_FILES[0]).write_text(_metric_text(self.metric_identity(old) or {}, roles))
        os.replace(tmp, target)
        shutil.rmtree(source, ignore_errors=True)

    def write_scores(self, metric: str, frame: pd.DataFrame, run_id: str, batch: int) -> Path:
        """One scored batch: key, the metric's columns and the scoring run's id (which decides a key scored twice)."""
        out = self.scores / metric / f"{run_id}-{batch:05d}.parquet"
        frame = frame.assign(run_id=run_id)
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
        return self.write_rows(rows, run_id, batch)

    def write_rows(self, rows: Sequence[dict[str, Any]], run_id: str, batch: int) -> Path:
        """One row part, `rows/<run_id>-<batch>.parquet`, with every row's columns (None where a row lacks one)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = self.rows / f"{run_id}-{batch:05d}.parquet"
        names = list(dict.fromkeys(name for row in rows for name in row))  # every row's columns, first seen first
        table = pa.table({name: [row.get(name) for row in rows] for name in names})
        for name, kind in TYPED_WHEN_EMPTY.items():
            if name in table.column_names and pa.types.is_null(table.schema.field(name).type):
                table = table.set_column(table.column_names.index(name), name, table.column(name).cast(kind))
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
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


def _metric_text(identity: dict[str, Any], roles: dict[str, str] | None) -> str:
    """The text of a `_metric.yaml`: a metric's identity, then its columns' roles where known."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create({**identity, **({"roles": dict(roles)} if roles else {})}))


def parquet_files(folder: Path) -> list[Path]:
    """A table's files in name order (compacted first, then parts by run start); temp files are hidden."""
    try:
        names = [e.name for e in os.scandir(folder) if e.name.endswith(".parquet") and not e.name.startswith((".", "_"))]
    except FileNotFoundError:
        return []
    return [folder / n for n in sorted(names)]


def part_run_id(path: Path) -> str:
    """The run that wrote a part `<run_id>-<batch>.parquet`."""
    return path.stem.rsplit("-", 1)[0]


def scan(folder: Path, columns: Sequence[str] | None = None, files: Sequence[Path] | None = None) -> pa.Table:
    """A table folder (or the given files of it) read in one pyarrow dataset scan.

    With `columns`, only those are read (each must be in every file, as `key` and `run_id` are). Without, every column
    of every file is read under the files' unified schema (a column some parts lack is null there).
    """
    import pyarrow as pa

    def read(paths: Sequence[Path]) -> pa.Table:
        if not paths:
            return pa.table({c: pa.array([], pa.string()) for c in columns or ("key",)})
        factory = _factory(paths)
        if columns is None:
            return factory.finish(factory.inspect(promote_options="permissive", fragments=None)).to_table()
        return factory.finish(factory.inspect(fragments=1)).to_table(columns=list(columns))

    return _on_current_files(folder, read, files)


def schema(folder: Path) -> pa.Schema:
    """The unified schema of a table folder's files (footers only; no rows are read); empty for no files."""
    import pyarrow as pa

    def read(paths: Sequence[Path]) -> pa.Schema:
        return _factory(paths).inspect(promote_options="permissive", fragments=None) if paths else pa.schema([])

    return _on_current_files(folder, read)


def _on_current_files(folder: Path, read: Callable[[list[Path]], Any], files: Sequence[Path] | None = None) -> Any:
    """`read` the folder's files; a file removed by a compaction between listing and reading makes it list again."""
    for _ in range(10):
        paths = list(files) if files is not None else parquet_files(folder)
        try:
            return read(paths)
        except FileNotFoundError:
            if files is not None:
                raise
    return read(parquet_files(folder))


def _factory(paths: Sequence[Path]) -> Any:
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    return ds.FileSystemDatasetFactory(pafs.LocalFileSystem(), [str(p) for p in paths], ds.ParquetFileFormat())


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per key, the one written last: the highest `run_id` (file order among equals, and for rows without one)."""
    import numpy as np
    import pyarrow as pa

    if table.num_rows == 0:
        return table
    keys = table.column("key").to_numpy(zero_copy_only=False)
    runs = (table.column("run_id").fill_null("").to_numpy(zero_copy_only=False) if "run_id" in table.column_names
            else np.full(len(keys), "", dtype=object))
    order = np.lexsort((np.arange(len(keys)), runs.astype(str), keys.astype(str)))  # by key, then run, then position
    last = np.ones(len(order), dtype=bool)
    last[:-1] = keys[order][:-1] != keys[order][1:]
    return table.take(pa.array(np.sort(order[last])))


def latest_per_key(table: pa.Table) -> pd.DataFrame:
    """`latest_rows` as a DataFrame, rows in file order."""
    import pandas as pd

    if table.num_rows == 0:
        return pd.DataFrame()
    return latest_rows(table).to_pandas().reset_index(drop=True)


def last_writes(files: Sequence[Path]) -> dict[str, float]:
    """Run id -> when it last wrote to a table: a part's modification time, or the record a compacted file keeps."""
    import pyarrow.parquet as pq

    last: dict[str, float] = {}
    for f in files:
        if f.name.startswith(COMPACTED_PREFIX):
            written = json.loads((pq.read_schema(f).metadata or {}).get(WRITTEN_KEY, b"{}"))
        else:
            written = {part_run_id(f): f.stat().st_mtime}
        for run, when in written.items():
            last[run] = max(last.get(run, 0.0), when)
    return last


def compact_folder(folder: Path) -> tuple[int, int]:
    """Merge a table's files into one, keeping one row per key (the latest); returns (files before, after).

    The merged file is written atomically and takes the newest merged file's modification time (so a report written
    after the last row stays current); the merged files are deleted only after it is in place. Parts that writers add
    meanwhile are not in the snapshot and stay as they are.
    """
    import pyarrow.parquet as pq

    files = parquet_files(folder)
    if len(files) < 2:
        return len(files), len(files)
    table = latest_rows(scan(folder, files=files))
    written = last_writes(files)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), WRITTEN_KEY: json.dumps(written).encode()})
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    out = folder / f"{COMPACTED_PREFIX}{stamp}-{HOST}-{os.getpid()}.parquet"
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    newest = max(f.stat().st_mtime for f in files)
    os.utime(out, (newest, newest))
    for f in files:
        if f != out:
            f.unlink(missing_ok=True)
    return len(files), len(parquet_files(folder))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
