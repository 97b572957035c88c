"""The store writes atomically, unions row files and cleans what killed processes left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from styleprobe.disk import HOST, atomic_write
from styleprobe.run.store import Store


def _rows(keys):
    return [{"key": k, "injection": "style", "seed": 0} for k in keys]


def test_write_batch_then_table(tmp_path):
    store = Store(tmp_path)
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    store.write_batch(_rows(["aa1", "bb2", "cc3"]), images, "run1", 0)
    store.write_batch(_rows(["dd4"]), images[:1], "run2", 0)
    table = store.table()
    assert sorted(table.key) == ["aa1", "bb2", "cc3", "dd4"]
    assert set(table.run_id) == {"run1", "run2"}
    assert (tmp_path / table.set_index("key").loc["bb2", "image_path"]).exists()
    assert store.done_keys() == {"aa1", "bb2", "cc3", "dd4"}


def test_duplicate_keys_across_files_collapse_to_one_row(tmp_path):
    store = Store(tmp_path)
    im = [Image.new("RGB", (8, 8))]
    store.write_batch(_rows(["aa1"]), im, "run1", 0)
    store.write_batch(_rows(["aa1"]), im, "run2", 0)  # e.g. two jobs that raced on the same item
    assert len(store.table()) == 1 and len(store.row_files()) == 2


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "sub" / "file.parquet"

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    store = Store(tmp_path)
    store.rows.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = store.rows / f".x.parquet.{HOST}.{dead_pid}.tmp"
    live = store.rows / f".y.parquet.{HOST}.{os.getpid()}.tmp"
    other_host = store.rows / f".z.parquet.otherhost.{dead_pid}.tmp"
    for p in (stale, live, other_host):
        p.write_text("partial")
    assert store.clean_stale_temp() == 1
    assert not stale.exists() and live.exists() and other_host.exists()
    assert store.row_files() == []  # hidden temp files are never read as rows


# --- one scan per table, compaction, plain readers -------------------------------------------------------------

import signal  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

from styleprobe.run.store import COMPACTED_PREFIX, compact_folder  # noqa: E402


def _write_rows(store: Store, run_id: str, batch: int, keys, value: float, extra: dict | None = None) -> None:
    """A row part as `write_batch` writes it, without images (rows name image paths; nothing here reads them)."""
    rows = [{"key": k, "injection": "style", "value": value, "peak_gpu_bytes": None, **(extra or {})} for k in keys]
    store.write_batch(rows, [Image.new("RGB", (2, 2))] * len(rows), run_id, batch)


def _by_key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("key").reset_index(drop=True)


def test_the_later_run_wins_a_key_written_twice_before_and_after_compaction(tmp_path):
    store = Store(tmp_path)
    _write_rows(store, "20260101-000000-000001-h-1", 0, ["a", "b"], 1.0)
    _write_rows(store, "20260101-000000-000003-h-3", 0, ["b", "c"], 3.0, {"replicate": "seed=1"})  # a column of its own
    _write_rows(store, "20260101-000000-000002-h-2", 0, ["c", "d"], 2.0)  # an earlier-started run that wrote later
    before = _by_key(store.table())
    assert before.key.tolist() == ["a", "b", "c", "d"]
    assert before.value.tolist() == [1.0, 3.0, 3.0, 2.0]  # b and c: the run that started last
    assert before.replicate.isna().tolist() == [True, False, False, True]
    assert compact_folder(store.rows) == (3, 1)
    assert [f.name.startswith(COMPACTED_PREFIX) for f in store.row_files()] == [True]
    pd.testing.assert_frame_equal(_by_key(store.table()), before)
    plain = _by_key(pd.read_parquet(store.rows))  # a plain tool sees the same table, every column
    pd.testing.assert_frame_equal(plain[before.columns], before, check_dtype=False)
    _write_rows(store, "20260101-000000-000004-h-4", 0, ["a"], 4.0)  # a part after the compacted file still wins
    assert _by_key(store.table()).value.tolist() == [4.0, 3.0, 3.0, 2.0]
    assert compact_folder(store.rows) == (2, 1)
    assert _by_key(store.table()).value.tolist() == [4.0, 3.0, 3.0, 2.0]


def test_plain_pandas_reads_rows_and_scores_before_and_after_compaction(tmp_path):
    store = Store(tmp_path)
    for run, keys in (("20260101-000000-000001-h-1", ["a", "b"]), ("20260101-000000-000002-h-2", ["c"])):
        _write_rows(store, run, 0, keys, 1.0)
        store.write_scores("style_clip", pd.DataFrame({"key": keys, "style_clip": [0.5] * len(keys),
                                                       "style_clip_model": ["m"] * len(keys)}), run, 0)
    store.write_metric_identity("style_clip", {"scorer": "style_clip"})
    for stage in ("parts", "compacted"):
        rows, scores = pd.read_parquet(store.rows), pd.read_parquet(store.scores / "style_clip")
        assert sorted(rows.key) == ["a", "b", "c"] and sorted(scores.key) == ["a", "b", "c"], stage
        assert scores.style_clip.tolist() == [0.5] * 3 and set(scores.run_id) == {rows.run_id.min(), rows.run_id.max()}
        assert {"style_clip", "style_clip_model", "run_id"} <= set(store.table().columns)
        if stage == "parts":
            assert store.compact() == {"rows": (2, 1), "scores/style_clip": (2, 1)}
    assert store.compact() == {"rows": (1, 1), "scores/style_clip": (1, 1)}  # nothing left to merge
    assert store.metric_identity("style_clip") == {"scorer": "style_clip"}


def test_a_legacy_identity_file_is_read_and_renamed_by_compaction(tmp_path):
    store = Store(tmp_path)
    _write_rows(store, "r1", 0, ["a"], 1.0)
    (store.scores / "leak").mkdir(parents=True)
    (store.scores / "leak" / "metric.yaml").write_text("scorer: leak_clip\n")  # as folders written before kept it
    assert store.metrics() == ["leak"] and store.metric_identity("leak") == {"scorer": "leak_clip"}
    store.compact()
    assert not (store.scores / "leak" / "metric.yaml").exists() and store.metric_identity("leak") == {"scorer": "leak_clip"}


WRITER = """
import sys, time
from PIL import Image
from styleprobe.run.store import Store
store, run, n = Store(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for b in range(n):
    keys = [f"k{b:04d}-{i}" for i in range(4)] + ([f"k{b - 1:04d}-0"] if b else [])  # a key of the previous part again
    rows = [{"key": k, "batch": b, "run": run} for k in keys]
    store.write_batch(rows, [Image.new("RGB", (2, 2))] * len(rows), run, b)
    time.sleep(0.005)
"""


COMPACT_LOOP = """
import sys
from pathlib import Path
from styleprobe.run.store import Store
store, n = Store(sys.argv[1]), 0
while not Path(sys.argv[2]).exists():
    n += bool(store.compact())
print(n)
"""


def test_compaction_while_another_process_writes_loses_nothing_and_doubles_nothing(tmp_path):
    """A writer, a compactor and a reader, each its own process: the reader never sees a row twice or a row go."""
    root, stop = tmp_path / "results", tmp_path / "stop"
    store = Store(root)
    n = 150
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), "20260101-000000-000001-h-1", str(n)])
    compactor = subprocess.Popen([sys.executable, "-c", COMPACT_LOOP, str(root), str(stop)], stdout=subprocess.PIPE, text=True)
    seen = 0
    while writer.poll() is None:
        table = store.rows_table()
        assert table.empty or table.key.is_unique  # never a row twice
        assert len(table) >= seen  # never a row lost
        seen = len(table)
    stop.touch()
    compactions = int(compactor.communicate(timeout=60)[0])
    assert writer.returncode == 0 and compactor.returncode == 0 and compactions > 1
    store.compact()
    table = store.rows_table()
    assert len(store.row_files()) == 1
    assert sorted(table.key) == sorted(f"k{b:04d}-{i}" for b in range(n) for i in range(4))
    assert (table.set_index("key").loc["k0003-0", "batch"]) == 4  # the later part of the same run wins


COMPACTOR = """
import os, sys, time
from pathlib import Path
import styleprobe.run.store as st
def unlink(self, missing_ok=False, _unlink=Path.unlink):  # slow deletes, so a kill can land between them
    print("unlink", flush=True); time.sleep(0.02); _unlink(self, missing_ok=missing_ok)
Path.unlink = unlink
_atomic = st.atomic_write
def atomic(path, write):
    print("writing", flush=True); time.sleep(0.05); _atomic(path, write); print("written", flush=True); time.sleep(0.05)
st.atomic_write = atomic
st.Store(sys.argv[1]).compact()
print("done", flush=True)
"""


@pytest.mark.parametrize("moment", ["writing", "written", "unlink:1", "unlink:5"])
def test_kill_9_at_any_moment_of_a_compaction_leaves_the_same_table(tmp_path, moment):
    store = Store(tmp_path)
    for b in range(12):
        _write_rows(store, f"20260101-000000-{b:06d}-h-1", 0, [f"k{b}", f"k{b + 1}"], float(b))
    expected = _by_key(store.rows_table())
    child = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    marker, _, count = moment.partition(":")
    seen = 0
    for line in child.stdout:
        seen += line.strip() == marker
        if seen >= int(count or 1):
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL
    pd.testing.assert_frame_equal(_by_key(store.rows_table()), expected)  # the same rows, none lost, none twice
    store.clean_stale_temp()
    store.compact()  # a later compaction finishes the job
    assert len(store.row_files()) == 1 and not [p for p in store.rows.iterdir() if p.name.startswith(".")]
    pd.testing.assert_frame_equal(_by_key(store.rows_table()), expected)


def test_status_keeps_each_runs_rows_and_last_write_through_compaction(tmp_path):
    store = Store(tmp_path)
    _write_rows(store, "20260101-000000-000001-h-1", 0, ["a", "b"], 1.0)
    _write_rows(store, "20260101-000000-000001-h-1", 1, ["c"], 1.0)
    time.sleep(0.01)
    _write_rows(store, "20260101-000000-000002-h-2", 0, ["d"], 2.0)
    before = store.run_writes()
    assert {run: rows for run, (rows, _) in before.items()} == {"20260101-000000-000001-h-1": 3, "20260101-000000-000002-h-2": 1}
    store.compact()
    after = store.run_writes()
    assert after.keys() == before.keys()
    for run, (rows, last) in before.items():
        assert after[run][0] == rows and after[run][1] == pytest.approx(last)


def test_a_batch_typed_on_a_gpu_and_one_on_the_cpu_read_as_one_column(tmp_path):
    store = Store(tmp_path)
    _write_rows(store, "r1", 0, ["a"], 1.0)  # peak_gpu_bytes None (CPU)
    _write_rows(store, "r2", 0, ["b"], 1.0, {"peak_gpu_bytes": 2**33})
    for reader in (lambda: pd.read_parquet(store.rows), store.rows_table):
        table = _by_key(reader())
        assert table.peak_gpu_bytes.isna().tolist() == [True, False] and table.peak_gpu_bytes.iloc[1] == 2**33
