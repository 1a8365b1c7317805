"""Command lines built from the config dataclasses, so that every job's ``--help`` shows every
option with its default, and a job fails with one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import dataclasses
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
        help_text = f"{field.metadata.get('help', '')} (default: {field.default})"
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
    cause, and exit status 2 (usage/input) or 1 (a failure while running)."""
    from pipelines.data import DataError
    from pipelines.storage import OutputExistsError

    try:
        main()
    except (ValueError, FileNotFoundError, OutputExistsError, DataError) as error:
        print(f"featurelens {name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"featurelens {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - Ray wraps worker errors; name the root cause
        print(f"featurelens {name}: failed: {root_cause(error)}", file=sys.stderr)
        sys.exit(1)


def root_cause(error: BaseException) -> str:
    """The innermost message of an error Ray wrapped (task -> actor -> train worker)."""
    seen = error
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip()
    return text.splitlines()[-1] if text else type(seen).__name__
