"""Sweeps as parallel jobs through Hydra's launchers, progress lines, and `styleprobe status` of a running sweep."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir
from PIL import Image

from styleprobe import progress
from styleprobe.config import CONFIG_DIR
from styleprobe.run.plan import in_shard, shard_key
from styleprobe.run.status import format_status, status
from styleprobe.run.store import Store
from styleprobe.run.sweep import run

#: A small sweep: 4 patterns x 2 references x 2 prompts, 2 denoising steps, scored with every default metric.
SWEEP = ["data=small", "injection=presets", "sampler.steps=2"]


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny(overrides), return_hydra_config=hydra)


def _cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "STYLEPROBE_MULTIRUN_DIR": str(cwd / "multirun")}
    return subprocess.run([sys.executable, "-m", "styleprobe.cli", *on_tiny(args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


# presets ---------------------------------------------------------------------------------------------------------
def test_slurm_preset_takes_its_queue_from_the_environment(monkeypatch):
    monkeypatch.setenv("STYLEPROBE_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("STYLEPROBE_SLURM_ACCOUNT", "styleproj")
    monkeypatch.setenv("STYLEPROBE_SLURM_TIMEOUT_MIN", "90")
    launcher = _compose("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu-a100", "styleproj", 90)
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.max_num_timeout > 0  # a job killed at its limit is requeued: it resumes from the results folder
    monkeypatch.delenv("STYLEPROBE_SLURM_PARTITION")
    assert _compose("hydra/launcher=slurm", "hydra.launcher.partition=debug", hydra=True).hydra.launcher.partition == "debug"
    assert _compose("hydra/launcher=slurm", hydra=True).hydra.launcher.partition is None
    assert _compose("hydra/launcher=local", hydra=True).hydra.launcher._target_.endswith("LocalLauncher")


def test_hydra_own_launchers_pass_the_group_check():
    """Our presets live beside the plugins' own (basic, submitit_slurm, joblib, ...): both may be chosen."""
    from styleprobe.cli import check_group_choices

    for choice in ("slurm", "local", "gpus", "basic", "submitit_slurm", "submitit_local", "joblib"):
        assert check_group_choices([f"hydra/launcher={choice}"]) is None
    assert _compose("hydra/launcher=submitit_slurm", hydra=True).hydra.launcher._target_.endswith("SlurmLauncher")


def test_gpus_preset_pins_each_shard_to_its_own_device():
    for index in range(3):
        cfg = _compose("hydra/launcher=gpus", "shard.count=3", f"shard.index={index}", "engine.device=cuda:${shard.index}",
                       hydra=True)
        assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
        assert cfg.engine.device == f"cuda:{index}"
        assert cfg.scoring.device == f"cuda:{index}"  # the job scores on the GPU it generated on
    assert _compose("engine.device=cpu").scoring.device == "cpu"


def test_a_bad_multirun_launches_nothing(tmp_path):
    proc = _cli("-m", "hydra/launcher=local", "shard.count=2", "shard.index=range(2)", "engine.batch_size=-3",
                f"results_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "styleprobe: error: engine.batch_size=-3; give a positive integer or auto (nothing was launched)")
    assert not list(tmp_path.rglob(".submitit")) and not (tmp_path / "out").exists()


# launched sweeps -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> pd.DataFrame:
    """The small sweep run in this process, unsharded: the table every launcher must reproduce."""
    out = tmp_path_factory.mktemp("single") / "results"
    run(_compose(*SWEEP, f"results_dir={out}", "analyze=false"))
    table = Store(out).table()
    table.attrs["root"] = str(out)
    return table


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "gpus"])
def test_two_shards_as_separate_jobs_give_the_single_process_table(tmp_path, single_process, launcher):
    """submitit's local executor (SLURM's code path: pickled job, submitit's job folders) and joblib (one node, one
    process per GPU; here on the CPU): each job writes only its own files, the last one writes the report."""
    out = tmp_path / "results"
    pin = ["engine.device=cpu"] if launcher == "gpus" else []
    proc = _cli("-m", f"hydra/launcher={launcher}", "shard.count=2", "shard.index=range(2)", *SWEEP, *pin,
                f"results_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = Store(out).table()
    assert sorted(table.key) == sorted(single_process.key) and len(table) == 16
    # The same images to a grey level: joblib's workers (loky) each get cores / jobs CPU threads, and a CPU's float sums
    # depend on the thread count; and the single-process reference is made inside this test process, whose CPU kernels
    # earlier tests may have steered (oneDNN picks kernels by memory layout), so even submitit's jobs, which make the same
    # bytes as a fresh process, may differ from it by one grey level in a pixel. A wrong shard differs everywhere.
    reference_root = Path(single_process.attrs["root"])
    for key in table.key:
        name = f"images/{key[:2]}/{key}.png"
        pixels = [np.asarray(Image.open(root / name), dtype=int) for root in (out, reference_root)]
        assert np.abs(pixels[0] - pixels[1]).max() <= 1 and np.mean(pixels[0] != pixels[1]) < 0.01
    metrics = [c for c in table.columns if c.startswith(("style_", "text_", "leak_")) and table[c].dtype.kind == "f"]
    assert len(metrics) >= 6
    # scores within the rounding of those images (and of other batches than the single process scores in)
    pd.testing.assert_frame_equal(table.set_index("key").sort_index()[metrics],
                                  single_process.set_index("key").sort_index()[metrics], rtol=1e-3)
    # two jobs, each with its own run id, each writing only the rows of its shard
    rows = Store(out).rows_table()
    assert rows.run_id.nunique() == 2
    shard_of = {rid: {in_shard(shard_key(k, w), 0, 2) for k, w in zip(g.key, g.prepare_keys)} for rid, g in rows.groupby("run_id")}
    assert sorted(map(tuple, shard_of.values())) == [(False,), (True,)]
    for metric in Store(out).metrics():  # each job scored its own rows (every score carries the run that wrote it)
        scores = Store(out).metric_scores(metric).set_index("key").run_id
        assert (scores.loc[rows.key].to_numpy() == rows.run_id.to_numpy()).all()
    # the last shard to finish wrote the report; the other said it left it to that one
    assert (out / "analysis" / "report.md").is_file()
    logs = proc.stdout + "".join(p.read_text() for p in tmp_path.rglob("*_log.out"))
    assert logs.count("finished the sweep: writing the report") == 1
    assert re.search(r"the last shard to finish writes the report|another job is writing the report|"
                     r"the report already holds every shard's results", logs)
    assert re.search(r"generate: (\d+)/\1 images \(100%\), [\d.]+ images/s", logs)
    if launcher == "local":
        assert len(list(tmp_path.rglob(".submitit/*/*_log.out"))) == 2


# status ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_status_counts_a_killed_sweep(tmp_path):
    """A sweep killed midway: status shows what it wrote as done, the rest as pending, with speed and ETA."""
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "styleprobe.cli", "model=tiny", "data=small", "engine.batch_size=2", "metrics=[]", f"results_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(Store(out).row_files()) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(Store(out).done_keys())
    assert 0 < done < 56, done
    st = status(out)
    assert (st.planned, st.done, st.pending, st.shards) == (56, done, 56 - done, 1)
    assert st.images_per_second and st.eta_seconds and not st.report
    cli = _cli("status", f"results_dir={out}", cwd=tmp_path, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert re.search(rf"ip_adapter\s+0/1\s+{done}\s+{56 - done}", cli.stdout)
    assert "ETA" in cli.stdout and "of 56 done" in cli.stdout
    assert cli.stdout.strip() == format_status(status(out))


def test_status_of_a_folder_without_a_sweep_says_so(tmp_path):
    proc = _cli("status", f"results_dir={tmp_path}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"styleprobe: error: no sweep has run in {tmp_path}")


# progress --------------------------------------------------------------------------------------------------------
@pytest.fixture
def progress_settings():
    saved = (progress.SETTINGS.mode, progress.SETTINGS.every_percent, progress.SETTINGS.every_seconds)
    yield progress.SETTINGS
    progress.configure(*saved)


def test_progress_logs_one_line_per_step_of_percent(progress_settings, caplog):
    progress.configure("log", 25)
    with caplog.at_level(logging.INFO, logger="styleprobe"), progress.Progress(10, "generate", "image") as bar:
        for _ in range(10):
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert [re.match(r"generate: (\d+)/10 images", line).group(1) for line in lines] == ["1", "3", "5", "8", "10"]
    assert all(re.search(r"[\d.]+ images/s, elapsed \d\d:\d\d, ETA ", line) for line in lines)
    caplog.clear()
    progress.configure("off")
    with caplog.at_level(logging.INFO, logger="styleprobe"), progress.Progress(4, "score", "row") as bar:
        bar.update(4)
    assert not caplog.records


def test_progress_logs_the_first_batch_and_once_a_minute_between_percent_steps(progress_settings, caplog, monkeypatch):
    """A fake clock: 1000 items at 10 s each, so 10% takes 1000 s; lines come at the first item, every 60 s, and at
    each 10%."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    progress.configure("log", 10, 60)
    with caplog.at_level(logging.INFO, logger="styleprobe"), progress.Progress(1000, "generate", "image") as bar:
        for _ in range(120):
            now[0] += 10.0
            bar.update()
    done = [int(re.match(r"generate: (\d+)/1000 images", r.getMessage()).group(1)) for r in caplog.records]
    assert done[0] == 1  # the first batch, not the first 10%
    assert 100 in done  # the per-10% line is kept
    assert all(b - a <= 6 for a, b in zip(done, done[1:]))  # at most 60 s (6 items) between lines
    assert done == [1, 7, 13, 19, 25, 31, 37, 43, 49, 55, 61, 67, 73, 79, 85, 91, 97, 100, 106, 112, 118]
    assert "elapsed 19:40" in caplog.records[-1].getMessage()  # item 118 of the fake clock's 10 s each
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="styleprobe"), progress.Progress(1000, "score", "row") as bar:
        bar.update(1)
        bar.update(1)  # no time passed and no 10% crossed: no line
    assert len(caplog.records) == 1


def test_progress_bar_on_a_terminal(progress_settings, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_on_terminal", lambda: True)
    progress.configure("auto")
    with progress.Progress(3, "B-LoRA 1/1 ink", "step") as bar:
        assert bar.bar is not None
        bar.update(3, loss="0.1234")
    err = capsys.readouterr().err
    assert "B-LoRA 1/1 ink" in err and "3/3" in err and "loss=0.1234" in err
    monkeypatch.setattr(progress, "_on_terminal", lambda: False)
    assert progress.Progress(3, "x").bar is None


def test_progress_settings_are_checked():
    with pytest.raises(Exception, match=r"progress.mode='loud'; choose one of auto, bar, log, off"):
        progress.configure("loud")
    with pytest.raises(Exception, match=r"progress.every_percent=0"):
        progress.configure("log", 0)
    with pytest.raises(Exception, match=r"progress.every_seconds=0; give a number of seconds > 0"):
        progress.configure("log", 10, 0)


def test_one_holder_of_the_report_lock(tmp_path):
    store = Store(tmp_path)
    with store.exclusive("report") as first:
        with store.exclusive("report") as second:
            assert (first, second) == (True, False)
    with store.exclusive("report") as again:
        assert again


def test_speed_counts_overlapping_jobs_once_and_gaps_not_at_all(tmp_path):
    """Two shards side by side for 100 s, then a rerun a day later for 50 s: 150 s of wall time, not 250 or a day."""
    from datetime import datetime, timezone

    from styleprobe.run.status import active_time

    store = Store(tmp_path)
    t0 = 1_800_000_000.0
    runs = []
    for run_id, start, end, n in [("r0", t0, t0 + 100, 30), ("r1", t0 + 10, t0 + 90, 20), ("r2", t0 + 86_400, t0 + 86_450, 10)]:
        path = store.rows / f"{run_id}-00000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"key": [f"{run_id}-{i}" for i in range(n)], "run_id": run_id}).to_parquet(path)  # as runs write rows
        os.utime(path, (end, end))
        runs.append((run_id, {"_run": {"started": datetime.fromtimestamp(start, timezone.utc).isoformat()}}))
    runs.append(("r3", {"_run": {"started": datetime.fromtimestamp(t0, timezone.utc).isoformat()}}))  # wrote nothing
    seconds, images, active = active_time(store, runs)
    assert (round(seconds, 6), images, active) == (150.0, 60, 3)
    store.compact()  # the parts' times live on in the compacted file's record
    seconds, images, active = active_time(store, runs)
    assert len(store.row_files()) == 1 and (round(seconds, 6), images, active) == (150.0, 60, 3)


@pytest.mark.slow
def test_the_shard_that_completes_the_sweep_writes_the_report_once(tmp_path, caplog):
    """Shards run one after the other (by hand, or a job requeued): the first leaves the report, the second writes it,
    a rerun of either finds it newer than every result and leaves it alone."""
    out = tmp_path / "results"
    shard = lambda i: _compose(*SWEEP, f"results_dir={out}", "shard.count=2", f"shard.index={i}")  # noqa: E731
    with caplog.at_level(logging.INFO, logger="styleprobe"):
        first = run(shard(0))
        assert first.report is None and not (out / "analysis").exists()
        assert "the last shard to finish writes the report" in caplog.text
        second = run(shard(1))
        assert second.report is not None and (out / "analysis" / "report.md").is_file()
        written = (out / "analysis" / "report.md").stat().st_mtime_ns
        caplog.clear()
        again = run(shard(0))
        assert again.report is None and again.generated == 0
        assert "shard 0/2: the report already holds every shard's results" in caplog.text
    assert (out / "analysis" / "report.md").stat().st_mtime_ns == written


def _submitit_task_pids(folder: Path) -> list[int]:
    """Processes running a submitit job pickled under `folder` (the job itself, not its controller)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and any(str(folder).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job's process through /proc (Linux)")
def test_a_preempted_job_is_requeued_and_resumes(tmp_path):
    """SLURM's preemption and time-limit signal, sent to a job of submitit's local executor midway through its sweep:
    submitit requeues the job (the launcher's checkpoint hook), and the requeued job skips what was already made."""
    out = tmp_path / "results"
    env = {**os.environ, "STYLEPROBE_MULTIRUN_DIR": str(tmp_path / "multirun")}
    cmd = [sys.executable, "-m", "styleprobe.cli", "-m", "hydra/launcher=local", "model=tiny", "data=small", "engine.batch_size=1",
           "metrics=[]", f"results_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while len(Store(out).row_files()) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    pids = _submitit_task_pids(tmp_path / "multirun")
    assert len(pids) == 1 and proc.poll() is None, "the job should be running"
    before = len(Store(out).done_keys())
    os.kill(pids[0], signal.SIGUSR2)  # submitit's preemption / time-limit signal
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "multirun").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    planned = [tuple(map(int, m)) for m in re.findall(r"(\d+) items planned, (\d+) already done", logs)]
    assert len(planned) == 2 and planned[0] == (56, 0)
    assert planned[1][0] == 56 and planned[1][1] >= before > 0  # the requeued job resumed from the results folder
    assert len(Store(out).rows_table()) == 56 and Store(out).rows_table().run_id.nunique() == 2
