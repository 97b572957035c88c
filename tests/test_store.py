"""The store writes atomically, unions row files and cleans what killed processes left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from styleprobe.store import HOST, Store, atomic_write


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
