"""Connecting to Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), else a local one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import ray

from pipelines.errors import ResourceError
from pipelines.rundir import LOG_FILE

Plan = TypeVar("Plan")

log = logging.getLogger("featurelens")

API_SERVER_ADDRESS = "RAY_API_SERVER_ADDRESS"  # where Ray's state API is asked (dashboard/utils.py)


def init_ray(num_cpus: int | None = None, log_file: Path | None = None) -> None:
    """Join the cluster in $RAY_ADDRESS, or start Ray on this machine bound to loopback.

    With ``log_file``, Ray's and the libraries' logs go there (its path printed once) and the
    terminal shows featurelens's own lines. Idempotent: a second call reuses the connection."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    patient_dashboard()
    if log_file is not None:
        quiet_terminal(Path(log_file))
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
        port = free_loopback_port()
        # Ray's processes inherit this: their state-API calls (Ray Train's placement-group
        # cleaner) then ask this instance, not whichever they find when several run at once.
        os.environ[API_SERVER_ADDRESS] = f"http://127.0.0.1:{port}"
        try:
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, **local)
        except Exception as error:  # noqa: BLE001 - any dashboard failure: go on without it
            log.warning("Ray's dashboard did not start (%s); starting Ray without it", str(error).strip().splitlines()[0])
            ray.shutdown()
            os.environ.pop(API_SERVER_ADDRESS)
            ray.init(include_dashboard=False, **local)
    quiet_ray_data()


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the system's pick), for this instance's dashboard."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_file_beside(out: Path) -> Path:
    """The log of a job whose output folder appears whole at the end: ``OUT.log`` beside it."""
    return out.with_name(out.name + ".log")


# featurelens's own lines from Ray workers, printed on the driver as they are (no "(pid=...)" prefix).
OWN_LINES = ("[train]", "[extract]", "[stability]", "[pipeline]", "featurelens")


def quiet_terminal(log_file: Path) -> None:
    """The terminal keeps featurelens's lines; Ray's and the libraries' logs go to ``log_file``.

    Set before Ray starts: the ``ray`` loggers and Python warnings write to the file; the lines
    that workers print reach the driver through Ray's log monitor, where those that are not
    ours go to the file too; Ray Data's and Tune's progress bars and banners are turned off.
    Errors still reach the terminal in full: run_job prints each one."""
    log_file = Path(log_file)
    made = [folder for folder in (log_file.parent, *log_file.parent.parents) if not folder.exists()]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.made_folders = made  # discard_log removes them again
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)  # Ray Data logs every operator's metrics at DEBUG
    file_log = logging.getLogger("featurelens.log")
    if any(h.baseFilename == str(log_file.resolve()) for h in log_handlers()):
        return  # a second init_ray of the same run
    for old in log_handlers():  # another job's, earlier in this process
        detach(old)
    file_log.handlers, file_log.propagate = [handler], False
    setup_logging()
    logging.getLogger("featurelens").addHandler(handler)
    logging.getLogger("py.warnings").handlers, logging.getLogger("py.warnings").propagate = [handler], False
    logging.captureWarnings(True)
    route_to_file(handler)
    # Read when ray.data / ray.tune load: no progress bars, no banners, no per-trial result files.
    for name, value in (("RAY_DATA_DISABLE_PROGRESS_BARS", "1"), ("RAY_AIR_NEW_OUTPUT", "0"),
                        ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")):
        os.environ.setdefault(name, value)
    route_worker_lines(file_log)
    native_stderr_to(log_file)
    print(f"featurelens: Ray's and the libraries' logs go to {log_file}", flush=True)


def native_stderr_to(log_file: Path) -> None:
    """Ray's C++ core writes its warnings straight to file descriptor 2: that goes to the log
    file, while Python's sys.stderr (our errors, a traceback) keeps the terminal. Only for a
    plain process: where sys.stderr was replaced (pytest's capture), it is left alone."""
    if sys.stderr is not sys.__stderr__ or sys.__stderr__ is None:
        return
    try:
        fd = sys.__stderr__.fileno()
    except (OSError, ValueError):
        return
    sys.stderr.flush()
    terminal = os.dup(fd)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, fd)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)


def route_to_file(handler: logging.Handler) -> None:
    """The terminal handlers of the root and every ``ray`` logger replaced by ``handler``.
    Called again once Ray Data has loaded: it configures its loggers when imported."""
    for name in ["", *(n for n in list(logging.root.manager.loggerDict) if n == "ray" or n.startswith("ray."))]:
        logger = logging.getLogger(name)
        if not isinstance(logger, logging.Logger):
            continue
        # exact classes: pytest's capture handlers (subclasses) stay
        terminal = [h for h in logger.handlers if type(h) in TERMINAL_HANDLERS or type(h).__name__ == "PlainRayHandler"]
        for old in terminal:
            logger.removeHandler(old)
        # a logger that does not propagate (Ray Data's, once it has run) would bypass the file otherwise
        if (terminal or name in ("", "ray") or not logger.propagate) and handler not in logger.handlers:
            logger.addHandler(handler)


TERMINAL_HANDLERS = (logging.StreamHandler,)


def route_worker_lines(file_log: logging.Logger) -> None:
    """Lines printed by Ray workers: ours to stdout as they are, the rest to the log file."""
    import collections

    from ray._private import worker as ray_worker

    recent: collections.deque[str] = collections.deque(maxlen=8)  # Ray Train relays a worker's line twice

    def print_worker_logs(data: dict, print_file, ignore_prefix: bool = False) -> None:
        source = f"{data.get('actor_name') or data.get('task_name') or ''} pid={data.get('pid')}"
        for line in data.get("lines", []):
            file_log.info("(%s) %s", source, line)
            if line.lstrip().startswith(OWN_LINES) and line not in recent:
                recent.append(line)
                print(line, file=sys.stdout, flush=True)

    ray_worker.print_worker_logs = print_worker_logs


def discard_log() -> None:
    """After bad input: the log file and the folders made for it go, so that nothing is left
    behind; a log beside other output (a pipeline stopped in a later stage) is kept."""
    for handler in log_handlers():
        log_file = Path(handler.baseFilename)
        if log_file.name == LOG_FILE and any(path != log_file for path in log_file.parent.iterdir()):
            continue
        detach(handler)
        log_file.unlink(missing_ok=True)
        for folder in getattr(handler, "made_folders", []):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def detach(handler: logging.Handler) -> None:
    """``handler`` closed and removed from every logger."""
    handler.close()
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        if isinstance(logger, logging.Logger) and handler in logger.handlers:
            logger.removeHandler(handler)


def current_log_file() -> str | None:
    """The log file quiet_terminal opened, if any (a failure's traceback goes there)."""
    handlers = log_handlers()
    return handlers[0].baseFilename if handlers else None


def log_handlers() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger("featurelens.log").handlers if isinstance(h, logging.FileHandler)]


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
    if log_handlers():  # a quiet terminal: featurelens prints its own progress
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
        route_to_file(log_handlers()[0])
    # Ray 2.58's new Parquet reader drops a column named `path` (ray-project/ray#63757), which
    # the image and feature schemas both have.
    context.use_datasource_v2 = False


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def setup_logging() -> None:
    from pipelines.cli import terminal_logging

    terminal_logging()


# --- clusters that grow: the autoscaler asked for what a plan needs ------------------------------

POLL_S = 1.0  # how often the cluster's size is read while waiting
PROGRESS_EVERY_S = 30.0  # a waiting line at most this often
_requested = False  # whether this process has a request standing with the autoscaler


def fit_or_grow(plan: Callable[[float, float], Plan], bundles: list[dict[str, float]], timeout_s: float,
                option: str = "--resource-timeout") -> Plan:
    """``plan(cluster_cpus, cluster_gpus)``, which raises ResourceError when the cluster is too small.

    On a cluster that can grow (``autoscaler_can_grow``) the autoscaler is then asked for
    ``bundles`` (resource shapes, e.g. one per worker) and the plan is tried again as nodes come,
    with a waiting line every ``PROGRESS_EVERY_S``, until it fits or ``timeout_s`` has passed.
    Refused (ResourceError, exit status 2) without an autoscaler or after the timeout: the plan's
    own message, with what was asked. The request stands while the work runs (the autoscaler would
    otherwise take the new nodes away again); ``releasing_resources`` withdraws it afterwards. One
    request per cluster: a second job's request replaces this one (Ray's request_resources)."""
    try:
        return plan(cluster_cpus(), cluster_gpus())
    except ResourceError as error:
        refusal = error
    if not autoscaler_can_grow():
        raise ResourceError(f"{refusal}; the cluster has no autoscaler to add nodes") from None
    asked = resource_totals(bundles)
    request_bundles(bundles)
    log.info("asking the autoscaler for %s, waiting up to %g s (%s): %s", amounts(asked), timeout_s, option, refusal)
    started = last_line = time.monotonic()
    nodes = len(alive_nodes())
    while (now := time.monotonic()) < started + timeout_s:
        time.sleep(min(POLL_S, started + timeout_s - now))
        try:
            planned = plan(cluster_cpus(), cluster_gpus())
        except ResourceError as error:
            refusal = error
        else:
            log.info("the autoscaler added %d node(s) in %.0f s: the cluster has %s", len(alive_nodes()) - nodes,
                     time.monotonic() - started, amounts(cluster_totals(asked)))
            return planned
        if time.monotonic() - last_line >= PROGRESS_EVERY_S:
            last_line = time.monotonic()
            log.info("waiting for the autoscaler: %s up, %d node(s) added (%.0f s of %g s)", progress(asked),
                     len(alive_nodes()) - nodes, last_line - started, timeout_s)
    release_resources()
    raise ResourceError(f"{refusal}: the autoscaler was asked for {amounts(asked)} and did not add them "
                        f"within {option} {timeout_s:g} s")


def bundles(count: int, cpus: float, gpus: float = 0.0) -> list[dict[str, float]]:
    """``count`` resource shapes of ``cpus`` CPUs and ``gpus`` GPUs each (one per worker or actor)."""
    return [{"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})} for _ in range(count)]


def autoscaler_can_grow(wait_s: float = 10.0) -> bool:
    """Whether an autoscaler can add nodes to the cluster, from what it keeps in the GCS.

    KubeRay and autoscaler v2 report the cluster's node groups (Ray's ClusterConfig): it can grow
    when one may have more nodes than its minimum (the rule Ray Data uses). Otherwise the v1
    autoscaler (monitor.py on the head) writes its status to the GCS's key-value store at every
    update (``__autoscaling_status``): a cluster started by hand (``ray start``, ``ray.init``) has
    one too, but its node types only mirror the nodes, each named ``node_<node id>``; one started
    with ``--autoscaling-config`` (``ray up cluster.yaml``) names the node types of its config.
    Just after the head starts, the first status can take an update interval: up to ``wait_s``."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray._private.state import state
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return any(group.max_count == -1 or group.max_count > group.min_count
                   for group in config.node_group_configs if group.resources and group.max_count != 0)
    deadline = time.monotonic() + wait_s
    while (status := _internal_kv_get(DEBUG_AUTOSCALING_STATUS)) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    types = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {} if status else {}
    return any(kind != format_readonly_node_type(node) for node, kind in types.items())


def request_bundles(shapes: list[dict[str, float]]) -> None:
    """Ask the autoscaler for room for ``shapes`` (on top of nothing: a target size, not an addition)."""
    import atexit

    from ray.autoscaler.sdk import request_resources

    global _requested
    request_resources(bundles=shapes)
    if not _requested:
        atexit.register(release_resources)  # a job that stops early withdraws it too
    _requested = True


def release_resources() -> None:
    """Withdraw this process's request to the autoscaler, so that idle nodes can go again."""
    global _requested
    if _requested and ray.is_initialized():
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])
    _requested = False


@contextlib.contextmanager
def releasing_resources() -> Iterator[None]:
    """Around the work that uses what ``fit_or_grow`` asked for: the request is withdrawn after it."""
    try:
        yield
    finally:
        release_resources()


def resource_totals(shapes: list[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for shape in shapes:
        for name, amount in shape.items():
            totals[name] = totals.get(name, 0.0) + amount
    return totals


def cluster_totals(asked: dict[str, float]) -> dict[str, float]:
    """The cluster's totals of the resources in ``asked``."""
    have = ray.cluster_resources()
    return {name: float(have.get(name, 0.0)) for name in asked}


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def amounts(resources: dict[str, float]) -> str:
    """What was asked, GPUs first (what a plan usually waits for).

    >>> amounts({"CPU": 3.5, "GPU": 1.0})
    '1 GPU, 3.5 CPUs'
    """
    order = sorted(resources, key=lambda name: (name != "GPU", name != "CPU", name))
    return ", ".join(f"{resources[name]:g} {plural(name, resources[name])}" for name in order)


def progress(asked: dict[str, float]) -> str:
    """'0 of 2 GPUs, 3 of 3 CPUs': the cluster's size against what was asked, resource by resource."""
    have = cluster_totals(asked)
    order = sorted(asked, key=lambda name: (name != "GPU", name != "CPU", name))
    return ", ".join(f"{min(have[name], asked[name]):g} of {asked[name]:g} {plural(name, asked[name])}" for name in order)


def plural(name: str, amount: float) -> str:
    return name if amount == 1 else name + "s"
