"""Progress inside a long step (an epoch, an extraction) as plain lines: a bar, the count, the rate
and the time left. Plain lines, no escape codes: they travel from Ray workers to the driver's
terminal, or into a log file, as they are. No Ray, no torch."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


class Progress:
    """``update(done, total)`` prints a line at most every ``every`` seconds, and once at half
    way, so that a short step shows progress too; the caller prints the step's own last line."""

    def __init__(self, label: str, unit: str = "batches", every: float = 10.0,
                 emit: Callable[[str], None] | None = None) -> None:
        self.label, self.unit, self.every = label, unit, every
        self.emit = emit or (lambda line: print(line, flush=True))
        self.started = self.last = time.perf_counter()
        self.halfway_shown = False

    def update(self, done: int, total: int | None = None) -> None:
        now = time.perf_counter()
        halfway = total is not None and not self.halfway_shown and 2 * done >= total
        if (total is not None and done >= total) or not (halfway or now - self.last >= self.every):
            return
        self.last, self.halfway_shown = now, self.halfway_shown or halfway
        self.emit(progress_line(self.label, done, total, self.unit, now - self.started))


def progress_line(label: str, done: int, total: int | None, unit: str, seconds: float, width: int = 20) -> str:
    """'[train] epoch 2/5 [#########           ]  45%  120/268 batches  34.5 batches/s  ETA 4 s'."""
    rate = done / seconds if seconds > 0 else 0.0
    if total is None:  # a stream of unknown length: the count and the rate
        return f"{label} {done:,} {unit}  {rate:,.1f} {unit}/s"
    share = min(done / max(total, 1), 1.0)
    eta = f"ETA {format_seconds((total - done) / rate)}" if rate > 0 else "ETA ?"
    bar = "#" * round(share * width)
    return f"{label} [{bar:<{width}}] {share:4.0%}  {done:,}/{total:,} {unit}  {rate:,.1f} {unit}/s  {eta}"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


@contextlib.contextmanager
def watch_rows(folder: Path, total: int, label: str, poll: float = 1.0) -> Iterator[None]:
    """Progress of a Parquet table being written into ``folder`` (Ray Data writes it block by
    block): a thread counts the rows of the finished files from their footers."""
    import pyarrow.parquet as pq

    progress, stop = Progress(label, unit="images"), threading.Event()

    def rows() -> int:
        count = 0
        for path in Path(folder).glob("*.parquet"):
            try:
                count += pq.read_metadata(path).num_rows
            except (OSError, ValueError):  # a file still being written
                pass
        return count

    def watch() -> None:
        while not stop.wait(poll):
            progress.update(rows(), total)

    thread = threading.Thread(target=watch, name="featurelens-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
