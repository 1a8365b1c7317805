"""End to end: the wall time of each stage of ``make run``, from the run's ``stages.json``.

    python -m benchmarks.stages [--run-dir runs/fashion-mnist]

The pipeline job (``pipelines.pipeline``) writes RUN/stages.json: per stage its seconds, finish
time and a one-line summary. This reads it; it runs nothing itself (``make run`` takes long), so
the figures are those of the last ``make run`` on this machine, dated by their finish times.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks.common import REPO, Table


def make_run_dir() -> Path | None:
    """The --run-dir that the Makefile's `run` target passes, if it names one."""
    makefile = REPO / "Makefile"
    if not makefile.exists():
        return None
    text = makefile.read_text()
    block = re.search(r"^run:.*?(?=^\S|\Z)", text, re.S | re.M)
    found = re.search(r"--run-dir[ =](\S+)", block.group(0) if block else "")
    return REPO / found.group(1) if found else None


def find_stages(run_dir: str | Path | None) -> tuple[Path | None, list[Path]]:
    """(the stages.json found, the places looked at)."""
    tried: list[Path] = []
    bases = [Path(run_dir)] if run_dir else [p for p in (make_run_dir(), REPO / "runs" / "fashion-mnist") if p]
    for base in bases:
        base = base if base.is_absolute() else REPO / base
        for candidate in (base / "stages.json", base.parent / "stages.json"):
            if candidate not in tried:
                tried.append(candidate)
                if candidate.is_file():
                    return candidate, tried
    return None, tried


def run(run_dir: str | None = None) -> list[Table]:
    path, tried = find_stages(run_dir)
    table = Table("End to end: wall time per stage of `make run`", ["stage", "seconds", "share", "finished", "summary"])
    if path is None:
        table.add("(not measured yet)", "", "", "", "no stages.json found")
        table.notes.append(
            "Left for later: the pipeline's RUN/stages.json does not exist yet (looked at "
            + ", ".join(f"`{p.relative_to(REPO) if p.is_relative_to(REPO) else p}`" for p in tried)
            + "). Run `make run`, then `python -m benchmarks.stages` (or `make bench`) fills this table.")
        return [table]
    stages = json.loads(path.read_text())
    total = sum(float(row.get("seconds", 0)) for row in stages.values()) or float("nan")
    for stage, row in stages.items():
        seconds = float(row.get("seconds", float("nan")))
        table.add(stage, f"{seconds:,.1f}", f"{seconds / total:.0%}", row.get("finished", ""),
                  str(row.get("summary", "")).replace("|", "/"))
    table.add("**total**", f"**{total:,.1f}**", "100%", "", "")
    table.notes.append(f"from `{path.relative_to(REPO) if path.is_relative_to(REPO) else path}` "
                       "(the last `make run`; not re-run by the benchmark).")
    return [table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()
    for table in run(args.run_dir):
        print(table.markdown())


if __name__ == "__main__":
    main()
