"""Command lines built from the config dataclasses, so that every job's ``--help`` shows every
option with its default, and a job fails with one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

Config = TypeVar("Config")


def add_config_arguments(
    parser: argparse.ArgumentParser, config_class: type, prefix: str = "", overrides_only: bool = False
) -> None:
    """One ``--option`` per field of ``config_class`` (underscores become dashes).

    With ``overrides_only`` an option left out is absent from the parsed namespace, so that it
    does not override a value from a config file; ``--help`` still shows the default."""
    group = parser.add_argument_group(f"{prefix}{config_class.__name__}", config_class.__doc__)
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind = _base_type(hints[field.name])
        flag = f"--{prefix}{field.name.replace('_', '-')}"
        # argparse %-formats help text: a literal % (as in "80% subsamples") must be doubled
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})".replace("%", "%%")
        default = argparse.SUPPRESS if overrides_only else field.default
        dest = prefix.replace("-", "_") + field.name
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=kind, default=default, metavar=kind.__name__.upper(), help=help_text)


def config_from_arguments(args: argparse.Namespace, config_class: type[Config], prefix: str = "") -> Config:
    values = {f.name: getattr(args, prefix.replace("-", "_") + f.name) for f in dataclasses.fields(config_class)}
    return config_class(**values)


def _base_type(hint: Any) -> type:
    """``int | None`` -> int."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def run_job(name: str, main: Callable[[], object]) -> None:
    """Run a job's main; bad input or a stage failure ends in one line naming the job and the
    cause, and exit status 2 (usage/input) or 1 (a failure while running).

    An error raised inside a Ray task, actor or Train worker comes back wrapped, its str() a
    remote traceback: the user sees the original message instead, and an input error (say a
    DataError naming a file that would not decode) exits 2 wherever it was raised."""
    from pipelines.storage import OutputExistsError  # light: a bad option fails before torch or Ray load

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
            sys.exit(2)
        print(f"featurelens {name}: failed: {message}", file=sys.stderr)
        sys.exit(1)


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
