"""Connecting to Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), else a local one."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger("featurelens")


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in $RAY_ADDRESS, or start Ray on this machine bound to loopback.

    Idempotent: a second call in the same process reuses the connection."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    patient_dashboard()
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        # The dashboard serves Ray's state API, which Ray Train polls to clean up after a dead
        # run; it listens on loopback only. On an overloaded machine its modules can miss their
        # start-up timeout: Ray then runs without it (Ray Train only logs that it cannot poll).
        local = dict(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, **quiet)
        try:
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **local)
        except Exception as error:  # noqa: BLE001 - any dashboard failure: go on without it
            log.warning("Ray's dashboard did not start (%s); starting Ray without it", str(error).strip().splitlines()[0])
            ray.shutdown()
            ray.init(include_dashboard=False, **local)
    quiet_ray_data()


def patient_dashboard() -> None:
    """Longer start-up timeouts for the dashboard's modules than Ray's 30 s: on a busy 2-core
    machine they miss it, and the dashboard (the state API, the job server) is then missing.
    Set here, before Ray starts, so that ``ray start`` from the same environment gets them too."""
    os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "90")
    os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "120")


def quiet_ray_data() -> None:
    """Batch logs keep Ray Data's progress lines but not its per-dataset plan dumps."""
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    # Ray 2.58's new Parquet reader drops a column named `path` (ray-project/ray#63757), which
    # the image and feature schemas both have.
    context.use_datasource_v2 = False


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
