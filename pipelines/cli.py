"""Command lines built from the config dataclasses, so that every job's ``--help`` shows every
option with its default, and a job fails with one clear line instead of a traceback.

Every job parses with ``job_parser`` (no abbreviations; an unknown option gets the closest known
one as a suggestion, in one line), checks what it can without Ray (``pipelines.data.check_source``
and the config dataclasses), and only then starts Ray; paths are resolved here, at the edge."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pipelines import config as cfg

Config = TypeVar("Config")

# The choices of each option that has them: field name (or Class.field, where one class's differ)
# -> the tuple's name in pipelines.config (shown in --help as {a,b}; a tuple not there yet is
# skipped, and its dataclass still checks).
CHOICE_TUPLES = {
    "dataset": "DATASETS", "color": "IMAGE_MODES", "on_bad_image": "BAD_IMAGE_POLICIES", "mode": "TRAIN_MODES",
    "lr_schedule": "LR_SCHEDULES", "augment": "AUGMENTATIONS", "corrupt": "CORRUPTIONS", "split": "SPLITS",
    "TrainConfig.split": "TRAIN_SPLITS", "cluster_init": "CLUSTER_INITS",
    "clusterer": "CLUSTERERS", "gmm_covariance": "GMM_COVARIANCES", "bootstrap": "BOOTSTRAP_PROTOCOLS",
    "method": "RECLUSTER_METHODS",
}
CHOICES = {field: getattr(cfg, name) for field, name in CHOICE_TUPLES.items() if hasattr(cfg, name)}
GROUP_TITLES = {"DataConfig": "data", "TrainConfig": "training", "ExtractConfig": "extraction",
                "StabilityConfig": "stability sweep", "ReclusterConfig": "re-clustering", "ReportConfig": "report"}


class JobParser(argparse.ArgumentParser):
    """argparse with one-line errors (``featurelens JOB: error: ...``, exit 2) and a "did you
    mean" for an unknown option instead of the whole usage."""

    def __init__(self, job: str, doc: str | None) -> None:
        super().__init__(prog=f"python -m jobs.{job}", description=doc, allow_abbrev=False,
                         formatter_class=HelpFormatter)
        self.job = job

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"featurelens {self.job}: error: {message}; see python -m jobs.{self.job} --help\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(unknown_option(unknown[0], self._option_string_actions))
        return parsed


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written; options with a metavar show it once (``--epochs N``)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + metavar


def job_parser(job: str, doc: str | None) -> JobParser:
    return JobParser(job, doc)


def unknown_option(given: str, known: typing.Iterable[str]) -> str:
    """'unknown option --train-epoch (did you mean --train-epochs?)'."""
    name = given.split("=", 1)[0]
    if not name.startswith("-"):
        return f"unexpected argument {given!r}"
    close = difflib.get_close_matches(name, [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
    return f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else "")


def add_config_arguments(
    parser: argparse.ArgumentParser, config_class: type, prefix: str = "", overrides_only: bool = False,
    skip: tuple[str, ...] = (),
) -> None:
    """One ``--option`` per field of ``config_class`` (underscores become dashes), but those in ``skip``.

    With ``overrides_only`` an option left out is absent from the parsed namespace, so that it
    does not override a value from a config file; ``--help`` still shows the default."""
    title = GROUP_TITLES.get(config_class.__name__, config_class.__name__)
    group = parser.add_argument_group(f"{title} options" + (f" (--{prefix}*)" if prefix else ""),
                                      config_class.__doc__)
    hints = typing.get_type_hints(config_class)
    for field in (f for f in dataclasses.fields(config_class) if f.name not in skip):
        kind = _base_type(hints[field.name])
        flag = f"--{prefix}{field.name.replace('_', '-')}"
        default = argparse.SUPPRESS if overrides_only else field.default
        common = dict(dest=prefix.replace("-", "_") + field.name, default=default, help=help_text(field))
        if kind is bool and field.default is False:  # a plain flag: --overwrite
            group.add_argument(flag, action="store_true", **common)
        elif kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif choices := CHOICES.get(f"{config_class.__name__}.{field.name}", CHOICES.get(field.name)):
            group.add_argument(flag, choices=choices, **common)
        else:
            metavar = FIELD_METAVARS.get(field.name, METAVARS.get(kind, "TEXT"))
            group.add_argument(flag, type=kind, metavar=metavar, **common)


METAVARS = {int: "N", float: "X", str: "TEXT"}
FIELD_METAVARS = {"data_dir": "DIR", "image_size": "HxW", "init_from": "PATH", "checkpoint": "PATH",
                  "compare_runs": "DIR,DIR", "k": "K", "prototype_k": "K", "transform": "STEPS"}


def help_text(field: dataclasses.Field) -> str:
    """The field's help, with its default once (not where the text already says it)."""
    text = field.metadata.get("help", "")
    if "default" not in text.lower() and field.default is not None and field.default is not False:
        text += f" (default: {field.default})"
    return text.replace("%", "%%")  # argparse %-formats help text


def config_from_arguments(args: argparse.Namespace, config_class: type[Config], prefix: str = "") -> Config:
    values = {f.name: getattr(args, prefix.replace("-", "_") + f.name) for f in dataclasses.fields(config_class)}
    return build_config(config_class, values, prefix)


def build_config(config_class: type[Config], values: dict[str, Any], prefix: str = "") -> Config:
    """``config_class(**values)``; a ValueError names the options as typed (``--stability-k``)."""
    try:
        return config_class(**values)
    except ValueError as error:
        raise ValueError(option_names(str(error), config_class, prefix)) from None


def option_names(message: str, config_class: type, prefix: str = "") -> str:
    """'k must be >= 2' -> '--stability-k must be >= 2': each field name as its option."""
    names = sorted((f.name for f in dataclasses.fields(config_class)), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w\-'\"])(" + "|".join(map(re.escape, names)) + r")(?![\w\-'\"])")
    return pattern.sub(lambda match: f"--{prefix}{match[1].replace('_', '-')}", message)


def _base_type(hint: Any) -> type:
    """``int | None`` -> int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


# --- paths, resolved once at the edge --------------------------------------------------------------


def under_ray_job_submit() -> bool:
    """Whether this driver was started by ``ray job submit`` with a working directory: its cwd
    is then a temporary copy of that directory, private to this node and deleted afterwards."""
    import json

    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not (job_config and os.environ.get("RAY_ADDRESS")):
        return False
    try:
        return bool(json.loads(job_config).get("runtime_env", {}).get("working_dir"))
    except ValueError:
        return False


def output_path(text: str, option: str) -> Path:
    """An output folder as an absolute path. Under ``ray job submit`` a relative one is refused:
    it would land in the job's temporary working directory and be lost when the job ends."""
    path = Path(text).expanduser()
    if not path.is_absolute() and under_ray_job_submit():
        raise ValueError(f"{option} {text}: a relative path under `ray job submit` lands in the job's temporary "
                         f"working directory and is lost; give an absolute path on storage every node sees")
    return path.resolve()


def input_path(text: str | None, option: str) -> str | None:
    """An input file or folder as an absolute path; a missing one is refused by its option."""
    if text is None:
        return None
    path = Path(text).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"{option} {text}: no such file or folder")
    return str(path)


def input_paths(text: str | None, option: str) -> str | None:
    """A comma list of input paths (``--compare-runs a,b``), each made absolute."""
    return None if text is None else ",".join(input_path(part.strip(), option) for part in text.split(","))


def resolved_data(data: cfg.DataConfig) -> cfg.DataConfig:
    """``data`` with an absolute --data-dir, checked to exist (the workers run elsewhere)."""
    if data.data_dir is None:
        return data
    path = Path(data.data_dir).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--data-dir {data.data_dir}: no such folder")
    return dataclasses.replace(data, data_dir=str(path))


def add_output_argument(parser: argparse.ArgumentParser, what: str, *aliases: str) -> None:
    """``--out DIR``, the one name of every job's output folder (``aliases``: older names)."""
    parser.add_argument("--out", *aliases, dest="out", required=True, metavar="DIR", help=what)


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever sys.stdout is at the time (a test's capture, say)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def terminal_logging() -> None:
    """featurelens's own log lines on the terminal, plainly (``featurelens data: ...``); other
    libraries' warnings too, until pipelines.runtime.quiet_terminal sends them to the log file."""
    ours = logging.getLogger("featurelens")
    if not any(isinstance(h, _Stdout) for h in ours.handlers):
        terminal = _Stdout()
        terminal.setFormatter(logging.Formatter("featurelens %(message)s"))
        ours.addHandler(terminal)
    ours.propagate = False
    ours.setLevel(logging.INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_job(name: str, main: Callable[[], object]) -> None:
    """Run a job's main; bad input or a stage failure ends in one line naming the job and the
    cause, and exit status 2 (usage/input) or 1 (a failure while running).

    An error raised inside a Ray task, actor or Train worker comes back wrapped, its str() a
    remote traceback: the user sees the original message instead, and an input error (say a
    DataError naming a file that would not decode) exits 2 wherever it was raised."""
    from pipelines.storage import OutputExistsError  # light: a bad option fails before torch or Ray load

    terminal_logging()
    try:
        main()
    except KeyboardInterrupt:
        print(f"featurelens {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - Ray wraps worker errors; name the root cause
        kind, message = error_summary(error)
        # DataError, ResourceError and the config checks are ValueErrors
        if isinstance(error, (ValueError, FileNotFoundError, OutputExistsError)) or kind in INPUT_ERRORS:
            print(f"featurelens {name}: error: {message}", file=sys.stderr)
            runtime = sys.modules.get("pipelines.runtime")
            if runtime:  # bad input leaves nothing behind, not even the log of the attempt
                runtime.discard_log()
            sys.exit(2)
        print(f"featurelens {name}: failed: {message}{logged_traceback()}", file=sys.stderr)
        sys.exit(1)


def logged_traceback() -> str:
    """Where the failure's whole traceback went: the run's log file, when the job opened one."""
    runtime = sys.modules.get("pipelines.runtime")  # loaded only once the job got as far as Ray
    log_file = runtime.current_log_file() if runtime else None
    if not log_file:
        return ""
    logging.getLogger("featurelens.log").exception("the job failed")
    return f" (the traceback and Ray's logs: {log_file})"


# Errors that mean bad input or options, by class name: a Ray worker's error may come back as text only.
INPUT_ERRORS = ("DataError", "ResourceError", "ValueError", "FileNotFoundError", "OutputExistsError")
_ERROR_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception))): (.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(error: BaseException) -> str:
    """The message of the error behind ``error``: its own message for an error of ours, the
    original one for an error Ray wrapped (task -> actor -> train worker)."""
    return error_summary(error)[1]


def error_summary(error: BaseException) -> tuple[str, str]:
    """(class name, message) of the error behind ``error``.

    Ray's wrappers are unwrapped: a task's or actor's RayTaskError (``.cause``), Ray Train's
    WorkerGroupError (the lowest rank's failure) and its UserExceptionWithTraceback, a
    ControllerError, and ``__cause__`` chains. Where Ray kept only the text of the original (Ray
    Data's UserCodeException holds the UDF's traceback as text), the first ``module.SomeError:
    message`` line of that text that is not Ray's own is the original."""
    chain = [error]
    while _is_ray(chain[-1]) and len(chain) < 20:
        inner = _wrapped(chain[-1])
        if inner is None or any(inner is seen for seen in chain):
            break
        chain.append(inner)
    innermost = chain[-1]
    if not _is_ray(innermost):
        return type(innermost).__name__, str(innermost).strip() or type(innermost).__name__
    for wrapper in reversed(chain):
        for line in _ANSI.sub("", str(wrapper)).splitlines():
            match = _ERROR_LINE.match(line.rstrip())
            if match and not match.group(1).startswith("ray."):
                return match.group(2), match.group(3).strip()
    lines = [line.strip() for line in _ANSI.sub("", str(innermost)).splitlines() if line.strip()]
    return type(innermost).__name__, lines[0] if lines else type(innermost).__name__


def _is_ray(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] == "ray"


def _wrapped(error: BaseException) -> BaseException | None:
    """The exception a Ray exception wraps, if it holds one."""
    failures = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: error}
    candidates = [
        getattr(error, "_base_exc", None),  # Ray Train's UserExceptionWithTraceback
        getattr(error, "controller_failure", None),  # ray.train.ControllerError
        failures[min(failures)] if isinstance(failures, dict) and failures else None,
        getattr(error, "cause", None),  # RayTaskError / RayActorError
        getattr(error, "health_check_failure", None),
        error.__cause__,
    ]
    return next((c for c in candidates if isinstance(c, BaseException)), None)
