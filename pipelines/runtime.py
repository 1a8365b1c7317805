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
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": True, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        # The dashboard serves Ray's state API, which Ray Train polls to clean up after a dead
        # run; it listens on loopback only.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            num_cpus=num_cpus,
            **quiet,
        )
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Batch logs keep Ray Data's progress lines but not its per-dataset plan dumps."""
    ray.data.DataContext.get_current().print_on_execution_start = False


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
