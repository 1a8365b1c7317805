"""Atomic outputs: a reader sees a finished file or folder, or none, never a partial one.

``atomic_output`` is the one primitive; every writer in featurelens goes through it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from pipelines.errors import OutputExistsError


@contextlib.contextmanager
def atomic_output(final: str | Path, *, folder: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``final`` (a fresh folder with ``folder``), which
    replaces ``final`` in one rename when the block ends.

    If the block raises (or the process dies), ``final`` is untouched; a left-over temporary
    folder is removed by the next write of the same folder. An existing ``final`` is refused
    (OutputExistsError) unless ``overwrite``."""
    final = Path(final)
    refuse_existing(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def refuse_existing(final: Path, overwrite: bool) -> None:
    """OutputExistsError for an existing ``final`` unless ``overwrite``: a job checks this before
    Ray starts, and ``atomic_output`` again when it writes."""
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} already exists; pass --overwrite to replace it")


def replace(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final``: one rename for a file; for a folder, the old one moves aside first
    (a folder cannot be renamed over a non-empty one)."""
    if not (tmp.is_dir() and final.exists()):
        os.replace(tmp, final)
        return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, value: object) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str) + "\n")
