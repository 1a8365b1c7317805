"""Faults on the real local Ray cluster: a Ray Train worker killed mid-epoch, an extraction job and
a stability sweep killed half-way. Nothing finished is lost, nothing partial is visible, and a
rerun of the same command completes the work.

The kills come from outside, by process id (SIGKILL, as the OOM killer or a lost node would):
no fault hook lives in the product code. Only processes this test session started are killed:
the Train worker is found among this process's descendants, the jobs are our own subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.model import Autoencoder, fingerprint, load_model, save_model
from pipelines.rundir import METRICS_FILE, read_metrics
from pipelines.train import train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.faults


def job_env(ray_address: str) -> dict[str, str]:
    """A subprocess that joins the session's Ray cluster: killing it kills a driver, not a cluster.
    It runs from the repository, which Ray puts on the path of the job's workers."""
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ray_address}


@pytest.fixture(scope="module")
def ray_address(ray_session) -> str:
    return ray_session.get_runtime_context().gcs_address


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    """Poll ``condition`` every 20 ms until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            pytest.fail(f"the job ended (exit {process.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def settled(observe, quiet: float = 5.0, timeout: float = 60.0):
    """``observe()`` once it has not changed for ``quiet`` seconds: Ray stops a dead driver's
    workers within moments, and one of them may still finish its write meanwhile."""
    deadline = time.monotonic() + timeout
    value, since = observe(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now = observe()
        if now != value:
            value, since = now, time.monotonic()
    return value


def kill_and_reap(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


# --- a Ray Train worker killed mid-epoch -------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Linux /proc): the raylet this driver started, and its workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class WorkerKiller(threading.Thread):
    """Kills this session's Ray Train worker with SIGKILL once epoch 1's checkpoint is registered
    (the controller has written its snapshot): the worker is then inside epoch 2 (or 3)."""

    def __init__(self, run_dir: Path, timeout: float = 600) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.timeout = run_dir, timeout
        self.killed: list[int] = []
        self.metrics_at_kill: list[dict] = []
        self.error: str | None = None
        self.stop = threading.Event()  # set when training has returned

    def epoch_1_checkpointed(self) -> bool:
        snapshot = self.run_dir / "checkpoint_manager_snapshot.json"
        try:
            return bool(read_metrics(self.run_dir)) and "checkpoint_" in snapshot.read_text()
        except (OSError, ValueError):
            return False  # not there yet, or caught while being replaced

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            if self.epoch_1_checkpointed():
                workers = [pid for pid in descendants(os.getpid()) if process_title(pid).startswith("ray::RayTrainWorker")]
                if workers:
                    self.metrics_at_kill = read_metrics(self.run_dir)
                    for pid in workers:
                        os.kill(pid, signal.SIGKILL)
                    self.killed = workers
                    return
            time.sleep(0.02)
        self.error = "training ended (or timed out) before a RayTrainWorker could be killed after epoch 1's checkpoint"


def test_killed_train_worker_resumes_from_its_last_checkpoint(reference_training, tmp_path):
    data, config, reference = reference_training
    run_dir = tmp_path / "killed"
    killer = WorkerKiller(run_dir)
    killer.start()
    try:
        result = train(data, config, run_dir)
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    assert killer.killed, killer.error

    at_kill = [row["epoch"] for row in killer.metrics_at_kill]
    assert at_kill in ([1], [1, 2]), at_kill  # killed while training, after epoch 1's checkpoint
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # each epoch exactly once
    # Epoch 1 was not trained again: the restarted worker resumed from its checkpoint (a rerun
    # would have its own timings), and it ends where the uninterrupted run ended.
    assert result.history[0] == killer.metrics_at_kill[0]
    assert fingerprint(load_model(run_dir)[0]) == fingerprint(load_model(reference.run_dir)[0])
    assert load_model(run_dir)[1]["epochs"] == 3


# --- the extraction job killed half-way ----------------------------------------------------------


def test_killed_extraction_leaves_no_table_and_the_rerun_writes_each_row_once(tmp_path, ray_address):
    from pipelines.feature_table import read_features

    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    save_model(work / "model.pt", Autoencoder())  # untrained: the weights do not matter here
    command = [sys.executable, "-m", "jobs.extract", "--checkpoint", str(work / "model.pt"), "--split", "test",
               "--batch-size", "256", "--out", str(work / "features")]
    with open(logs / "first.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=job_env(ray_address), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: [p for p in work.glob(".features.tmp-*/**/*") if p.is_file()], 300,
                     "the first feature file to be written", process)
            kill_and_reap(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not (work / "features").exists()  # no partial table is visible

    rerun = subprocess.run(command, cwd=REPO, env=job_env(ray_address), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    table = read_features(work / "features")
    np.testing.assert_array_equal(table.ids, np.arange(60_000, 70_000))  # one row per test image
    # the stale temporary folder is gone (the job's log, features.log, stays beside the table)
    assert sorted(p.name for p in work.iterdir()) == ["features", "features.log", "model.pt"]


# --- the stability sweep killed half-way -----------------------------------------------------------

def blob_features(path: Path, n: int = 1500, dims: int = 64, centers: int = 4) -> Path:
    """A feature table (as jobs.extract writes it) of ``centers`` blobs in ``dims`` dimensions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.feature_table import METADATA_KEY, feature_table

    rng = np.random.default_rng(0)
    classes = rng.integers(0, centers, n)
    codes = (rng.normal(scale=6.0, size=(centers, dims))[classes] + rng.normal(size=(n, dims))).astype(np.float32)
    rows = pa.table({"id": np.arange(n), "label": classes, "label_name": [f"c{c}" for c in classes],
                     "path": pa.nulls(n, pa.string())})
    path.mkdir(parents=True)
    table = feature_table(rows, codes, np.zeros(n, np.float32))
    metadata = {"code_dim": dims, "class_names": [f"c{c}" for c in range(centers)]}
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata)}), path / "part-0.parquet")
    return path


def test_interrupted_sweep_reruns_only_the_missing_k(tmp_path, ray_address, capsys):
    from jobs import stability as stability_job

    features, out = blob_features(tmp_path / "features"), tmp_path / "stability"
    arguments = ["--features", str(features), "--out", str(out), "--k", "2-7", "--seeds", "6", "--resamples", "6"]
    with open(tmp_path / "sweep.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "jobs.stability", *arguments], cwd=REPO,
                                   env=job_env(ray_address), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: list(out.glob("per_k/k=*/fit.json")), 300, "the first fitted k", process)
            kill_and_reap(process)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finished = settled(lambda: {int(p.parent.name[2:]): p.stat().st_mtime_ns for p in out.glob("per_k/k=*/fit.json")})
    assert 0 < len(finished) < 6, finished
    assert not (out / "summary.csv").exists()

    capsys.readouterr()
    stability_job.main(arguments)  # the same command again, in this process (its Ray is up)
    assert f"computed {6 - len(finished)} k, reused {len(finished)}" in capsys.readouterr().out
    for k, mtime in finished.items():  # the fitted k were read back, not refitted
        assert (out / "per_k" / f"k={k:02d}" / "fit.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (out / "per_k").iterdir()) == [f"k={k:02d}" for k in range(2, 8)]  # no partial k
    assert pd.read_csv(out / "summary.csv")["k"].tolist() == list(range(2, 8))

    stability_job.main(arguments)  # finished: nothing to compute
    assert "computed 0 k, reused 6" in capsys.readouterr().out
