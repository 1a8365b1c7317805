"""Real cluster submission: `ray start --head` on loopback, `ray job submit` of the pipeline.

Marked `cluster`: `make test` runs these in a pytest session of their own, after the others.
The cluster gets its own temp dir, so that stopping it ends its processes only (`ray stop` would
end every Ray process on the machine)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipelines.rundir import LOG_FILE
from pipelines.runtime import free_loopback_port, patient_dashboard

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "stopped")  # as `ray job status` words them


def ray_cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    ray = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture
def local_cluster():
    """A one-node Ray cluster started the way a user starts a head node; stopped afterwards."""
    patient_dashboard()  # the head's dashboard serves `ray job submit`: let its modules start on a busy machine
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)

    dashboard_port = free_loopback_port()
    temp_dir = tempfile.mkdtemp(prefix="featurelens-cluster-")
    started = ray_cli(
        "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_loopback_port()}", "--num-cpus=2",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        # Every listening port its own, so that another Ray on the machine does not collide.
        *(f"--{name}={free_loopback_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")),
        env=env,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard_port}", env
    finally:
        stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_processes_of(temp_dir: str, grace: float = 10.0) -> None:
    """This cluster's processes only (``ray stop`` would stop every Ray on the machine): SIGTERM,
    then SIGKILL for those still there after ``grace`` seconds (the head's gcs_server outlived a
    SIGTERM)."""
    subprocess.run(["pkill", "-f", temp_dir], check=False)
    deadline = time.monotonic() + grace
    while subprocess.run(["pgrep", "-f", temp_dir], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
            return
        time.sleep(0.5)


@pytest.mark.cluster
@pytest.mark.submit
def test_pipeline_submitted_with_ray_job_submit_succeeds(local_cluster, tmp_path):
    address, env = local_cluster
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[data]\nlimit = 256\n[train]\nepochs = 1\nworkers = 1\n"
        "[stability]\nk = \"2-3\"\nseeds = 2\nresamples = 2\n[recluster]\nk = 2\nk_re = 2\n"
    )
    run_dir = tmp_path / "run"
    for _ in range(45):  # the head's dashboard and job agent take a while to come up after `ray start`
        submitted = ray_cli(
            "job", "submit", "--address", address, "--no-wait", "--submission-id", "featurelens-test",
            "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git", "**/__pycache__"]}),
            "--", sys.executable, "-m", "jobs.pipeline", "--config", str(config), "--out", str(run_dir),
            env=env,
        )
        if not any(later in submitted.stderr for later in ("No available agent", "Connection refused")):
            break
        time.sleep(4)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline, status = time.time() + 900, ""
    while time.time() < deadline:
        status = ray_cli("job", "status", "--address", address, "featurelens-test", env=env).stdout.lower()
        if any(f"job 'featurelens-test' {state}" in status for state in TERMINAL):
            break
        time.sleep(5)
    logs = ray_cli("job", "logs", "--address", address, "featurelens-test", env=env).stdout
    assert "job 'featurelens-test' succeeded" in status, status + logs[-3000:]
    assert "[pipeline] report:" in logs
    stages = json.loads((run_dir / "stages.json").read_text())
    assert list(stages) == ["train", "extract", "stability", "recluster", "report"]
    assert (run_dir / "report" / "report.html").stat().st_size > 10_000
    assert f"featurelens: Ray's and the libraries' logs go to {run_dir / 'featurelens.log'}" in logs
    assert (run_dir / "featurelens.log").stat().st_size > 0 and "Traceback" not in logs


@pytest.mark.cluster
def test_local_run_beside_another_ray_asks_only_its_own_instance(local_cluster, tmp_path):
    """Ray Train's placement-group cleaner queries Ray's state API from a Ray process; with a
    second Ray on the machine it found both, raised "Found multiple active Ray instances" and died
    (so a crashed run's resources would not be freed)."""
    _, env = local_cluster
    run_dir = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--limit", "64", "--epochs", "1", "--batch-size", "32",
         "--code-dim", "16", "--out", str(run_dir)],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    log = (run_dir / LOG_FILE).read_text()
    for failure in ("multiple active Ray instances", "Failed to query Ray Train Controller actor state"):
        assert failure not in log, log[-3000:]
