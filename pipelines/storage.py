"""Atomic outputs: a reader sees a finished output or none, never a partial one."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The output is already there; the caller must ask for it to be replaced."""


@contextlib.contextmanager
def atomic_output_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; rename it to ``final`` when the block ends.

    If the block raises (or the process dies), ``final`` is untouched: only a hidden
    ``.NAME.tmp-*`` folder may stay behind, which the next run removes. An existing ``final`` is
    refused unless ``overwrite``."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    tmp.replace(path)


def write_json_atomic(path: str | Path, value: object) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")
