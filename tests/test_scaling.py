"""Clusters that grow, and clusters of several nodes: the jobs on real multi-node Ray clusters.

- An autoscaling cluster whose worker nodes start at zero (Ray's fake multi-node provider, which
  ``ray.cluster_utils.AutoscalingCluster`` drives): a training plan larger than the head asks the
  autoscaler for a node, waits for it, and trains.
- ``ray.cluster_utils.Cluster``, two nodes of one CPU on this machine and no autoscaler: the same
  plan is refused at once, having written nothing; the stability sweep's work runs on both nodes.

Marked `cluster`: `make test` runs these in a pytest session of their own, after the others. The
jobs run as users run them (``python -m jobs...`` with RAY_ADDRESS). Each cluster gets its own temp
dir and is ended by the process ids of that dir (never `ray stop`: other Ray instances on the
machine are left alone). ``AutoscalingCluster`` itself is not used: its ``start`` and ``shutdown``
run ``ray stop --force`` (every Ray on the machine), and Ray 2.58's wheel lacks the example config
it builds on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.runtime import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
# A plan the head (1 CPU) cannot place, but a head and one "worker" node (2 CPUs) can: one Ray
# Train worker of 2 CPUs, and a CPU left to Ray Data.
TRAIN_NEEDING_A_NODE = ("--workers", "1", "--cpus-per-worker", "2", "--epochs", "1", "--limit", "64",
                        "--batch-size", "32", "--code-dim", "16")


def job_env(address: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": address}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def run_job(module: str, *arguments: str, address: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=REPO, env=job_env(address),
                          capture_output=True, text=True, timeout=timeout)


def end_processes_of(folder: str) -> None:
    """Kill, by id, every process whose command line names ``folder`` (a cluster's temp dir), and
    their children: the cluster's GCS, raylets, monitor, agents and workers, and no others."""
    table = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(pid)] = (parent, command)
    doomed = {pid for pid, (_, command) in table.items() if folder in command and pid != os.getpid()}
    while children := {pid for pid, (parent, _) in table.items() if parent in doomed} - doomed:
        doomed |= children
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def gcs_state(address: str):
    """Ray's view of a cluster (nodes, actors, task events), read from its GCS without joining it."""
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions

    state = GlobalState()
    state._initialize_global_state(GcsClientOptions.create(address, None, allow_cluster_id_nil=True,
                                                           fetch_cluster_id_if_nil=False))
    return state


def alive_nodes(state) -> list[dict]:
    return [node for node in state.node_table() if node["Alive"]]


def fake_autoscaling_config(gcs_address: str, head_cpus: int, worker_types: dict) -> dict:
    """A cluster config for Ray's fake multi-node provider: worker nodes are raylets on this machine,
    started and ended by the autoscaler (what AutoscalingCluster writes, minus `ray stop`)."""
    no_commands = {name: [] for name in ("initialization_commands", "setup_commands", "head_setup_commands",
                                         "worker_setup_commands", "head_start_ray_commands",
                                         "worker_start_ray_commands", "cluster_synced_files",
                                         "rsync_exclude", "rsync_filter")}
    return {
        "cluster_name": "featurelens-test", "max_workers": sum(t["max_workers"] for t in worker_types.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                                      "max_workers": 0}, **worker_types},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
        "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False, **no_commands,
    }


# On a busy machine a raylet can miss its 15 s wait for its dashboard agent's ports (Ray 2.58 has it
# fixed): it aborts, and the node with it. A start is retried, in a new temp dir each time.
START_ATTEMPTS = 3


def start_autoscaling_head(temp_dir: str) -> str:
    """``ray start --head`` with the fake provider's autoscaler: a head of 1 CPU that may get one
    "worker" node of 2 CPUs (none at start). Returns the GCS address."""
    address = f"127.0.0.1:{free_loopback_port()}"
    config = Path(temp_dir) / "autoscaling.json"
    worker = {"worker": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1}}
    config.write_text(json.dumps(fake_autoscaling_config(address, 1, worker)))
    env = {**job_env(address), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS")
    ports = (f"--{name}={free_loopback_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port", "node-manager-port", "object-manager-port"))
    started = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--autoscaling-config={config}",
         "--node-ip-address=127.0.0.1", f"--port={address.split(':')[1]}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}", *ports],
        env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        raise RuntimeError(started.stdout[-2000:] + started.stderr[-2000:])
    return address


@pytest.fixture
def autoscaling_cluster():
    for attempt in range(START_ATTEMPTS):
        temp_dir = tempfile.mkdtemp(prefix="featurelens-autoscaling-")
        try:
            address = start_autoscaling_head(temp_dir)
            break
        except RuntimeError:
            end_processes_of(temp_dir)
            if attempt == START_ATTEMPTS - 1:
                raise  # its temp dir kept: the Ray logs say why
            shutil.rmtree(temp_dir, ignore_errors=True)
    try:
        yield address
    finally:
        end_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_two_nodes(Cluster):
    """A head and one worker node of 1 CPU each, and their temp dir."""
    for attempt in range(START_ATTEMPTS):
        temp_dir = tempfile.mkdtemp(prefix="featurelens-two-nodes-")
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                    "temp_dir": temp_dir})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            return cluster, temp_dir
        except Exception:  # noqa: BLE001 - a node that did not come up: start again
            if cluster is not None:
                cluster.shutdown()
            end_processes_of(temp_dir)
            if attempt == START_ATTEMPTS - 1:
                raise  # its temp dir kept: the Ray logs say why
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes():
    """ray.cluster_utils.Cluster: a head and one worker node of 1 CPU each, no autoscaler."""
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    # Cluster records its head as the machine's "current" Ray (for address="auto"): put back what was there.
    address_file = Path(get_ray_address_file(None))
    recorded = address_file.read_text() if address_file.exists() else None
    try:
        cluster, temp_dir = start_two_nodes(Cluster)
    finally:
        if recorded is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(recorded)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        end_processes_of(temp_dir)  # the workers of the jobs that connected, should any outlive their raylet
        shutil.rmtree(temp_dir, ignore_errors=True)


def standing_request(address: str) -> list:
    """The resources a job has asked the (v1) autoscaler for and not withdrawn."""
    from ray._raylet import GcsClient

    value = GcsClient(address=address).internal_kv_get(b"autoscaler_resource_request", None)
    return json.loads(value) if value else []


@pytest.mark.cluster
def test_a_plan_larger_than_the_cluster_waits_for_the_autoscaler_then_trains(autoscaling_cluster, tmp_path):
    out = tmp_path / "train"
    result = run_job("jobs.train", *TRAIN_NEEDING_A_NODE, "--resource-timeout", "180", "--out", str(out),
                     address=autoscaling_cluster)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("featurelens asking the autoscaler for 3 CPUs, waiting up to 180 s (--resource-timeout): "
            "--workers 1 x 2 CPUs each needs 2 CPUs; the cluster has 1") in result.stdout, result.stdout[-3000:]
    assert "featurelens the autoscaler added 1 node(s)" in result.stdout, result.stdout[-3000:]
    assert "[train] done: 1 epochs" in result.stdout
    assert (out / "model.pt").stat().st_size > 0
    nodes = alive_nodes(gcs_state(autoscaling_cluster))
    assert sorted(node["Resources"].get("CPU") for node in nodes) == [1.0, 2.0]
    assert standing_request(autoscaling_cluster) == []  # withdrawn: the node may go when idle

    # More than the autoscaler may ever add (one node of 2 CPUs): refused after the timeout.
    result = run_job("jobs.train", *TRAIN_NEEDING_A_NODE, "--workers", "2", "--resource-timeout", "2",
                     "--out", str(tmp_path / "too-big"), address=autoscaling_cluster)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("featurelens train: error: --workers 2 x 2 CPUs each needs 4 CPUs; the cluster has 3"), error
    assert error.endswith(": the autoscaler was asked for 5 CPUs and did not add them within --resource-timeout 2 s")
    assert not (tmp_path / "too-big").exists() and standing_request(autoscaling_cluster) == []


@pytest.mark.cluster
def test_without_an_autoscaler_the_same_plan_is_refused_before_anything_is_written(two_nodes, tmp_path):
    out = tmp_path / "train"
    started = time.perf_counter()
    result = run_job("jobs.train", *TRAIN_NEEDING_A_NODE, "--out", str(out), address=two_nodes.address)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("featurelens train: error: --workers 1 x 2 CPUs each leaves 0 of the cluster's 2 CPUs"), error
    assert error.endswith("; the cluster has no autoscaler to add nodes"), error
    assert "waiting" not in result.stdout and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert time.perf_counter() - started < 60  # refused at once: no wait for --resource-timeout's 600 s


def nodes_that_held_a_cpu(state) -> set[str]:
    """The nodes where a task or an actor that reserved CPUs ran (Tune trials, Ray Data's tasks and
    actors: the work; the drivers and Ray's bookkeeping actors reserve none), from the GCS: a task's
    node is in its events, an actor's in the actor table (its creation task's events name none)."""
    from ray.core.generated.common_pb2 import TaskType

    tasks: dict[tuple, tuple[float, bytes, bytes]] = {}
    for event in state._get_all_task_events():
        key = (event.task_id, event.attempt_number)
        cpus, node, actor = tasks.get(key, (0.0, b"", b""))
        if event.HasField("task_info"):
            # CPUs of a placement group's bundle (a Tune trial's) are named CPU_group_...
            cpus = max([cpus, *(amount for name, amount in event.task_info.required_resources.items()
                                if name == "CPU" or name.startswith("CPU_group_"))])
            if event.task_info.type == TaskType.Value("ACTOR_CREATION_TASK"):
                actor = event.task_info.actor_id
        tasks[key] = (cpus, event.state_updates.node_id or node, actor)
    actor_nodes = {actor_id: info["Address"]["NodeID"] for actor_id, info in state.actor_table(None).items()}
    return ({node.hex() for cpus, node, _ in tasks.values() if cpus > 0 and node}
            | {actor_nodes[actor.hex()] for cpus, _, actor in tasks.values() if cpus > 0 and actor.hex() in actor_nodes})


def blob_table(folder: Path, rows: int = 3000, width: int = 16, seed: int = 0) -> np.ndarray:
    """A feature table of three well separated blobs (the documented schema: id and feature only),
    written as three files; returns each row's blob."""
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 3, size=rows)
    centres = rng.normal(scale=20.0, size=(3, width))
    codes = (centres[blob] + rng.normal(size=(rows, width))).astype(np.float32)
    folder.mkdir(parents=True)
    for part, chunk in enumerate(np.array_split(np.arange(rows), 3)):
        features = pa.FixedSizeListArray.from_arrays(pa.array(codes[chunk].reshape(-1)), width)
        pq.write_table(pa.table({"id": pa.array(chunk, pa.int64()), "feature": features}),
                       folder / f"part-{part}.parquet")
    return blob


@pytest.mark.cluster
def test_the_stability_sweep_runs_on_both_nodes_of_a_cluster(two_nodes, tmp_path):
    """Two k with one CPU each on two nodes of one CPU: two trials at once, one per node. Whatever
    runs the sweep (Tune trials, Ray Data tasks or actors), its work must reach both nodes."""
    from sklearn.metrics import adjusted_rand_score

    blob = blob_table(tmp_path / "features")
    out = tmp_path / "stability"
    result = run_job("jobs.stability", "--features", str(tmp_path / "features"), "--k", "2-3", "--seeds", "3",
                     "--resamples", "20", "--cpus-per-trial", "1", "--out", str(out), address=two_nodes.address)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    state = gcs_state(two_nodes.address)
    nodes = {node["NodeID"] for node in alive_nodes(state)}
    assert len(nodes) == 2
    assert nodes <= nodes_that_held_a_cpu(state), "the sweep's work ran on one node only"

    assignments = pq.read_table(out / "assignments").to_pandas()
    for k in (2, 3):
        of_k = assignments[assignments["k"] == k].sort_values("id")
        assert of_k["id"].tolist() == list(range(len(blob)))
        assert of_k["cluster"].nunique() == k
    three = assignments[assignments["k"] == 3].sort_values("id")
    assert adjusted_rand_score(blob, three["cluster"]) == pytest.approx(1.0)
