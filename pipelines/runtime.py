"""Connecting to Ray: the cluster named by RAY_ADDRESS (as under `ray job submit`), else a local one."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import ray

from pipelines.rundir import LOG_FILE

log = logging.getLogger("featurelens")


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
        try:
            ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **local)
        except Exception as error:  # noqa: BLE001 - any dashboard failure: go on without it
            log.warning("Ray's dashboard did not start (%s); starting Ray without it", str(error).strip().splitlines()[0])
            ray.shutdown()
            ray.init(include_dashboard=False, **local)
    quiet_ray_data()




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
