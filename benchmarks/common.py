"""What every benchmark shares: the machine description, medians, child processes, tables.

Each measurement runs in a fresh child process (``python -m benchmarks.X --child ...``) that
prints one JSON line: a run never inherits another's threads, caches or Ray instance, and the
baseline and the Ray path of one repetition run back to back, so that the load of a shared
machine hits both alike. Ratios are taken per repetition, then the median over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".bench"  # git-ignored: models, feature tables, Ray run folders of the benchmarks
REPORT = REPO / "BENCHMARKS.md"
RESULT_PREFIX = "BENCH-RESULT "


# --- the machine --------------------------------------------------------------------------------


def cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo ('' where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field)), "")


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_count() -> int:
    """The cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_flags() -> str:
    flags = set(cpuinfo("flags").split())
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def git_commit(repo: Path = REPO) -> str:
    done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict[str, str]:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu_model(),
        "cores": str(cpu_count()),
        "flags": cpu_flags(),
        "memory": f"{memory_gib():.0f} GiB",
        "python": platform.python_version(),
        "torch": version("torch"),
        "ray": version("ray"),
        "scikit-learn": version("scikit-learn"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": git_commit(),
        "load average at start": load_average(),
    }


# --- statistics ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # NaN out
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], digits: int = 0) -> str:
    """'median (min-max, n=3)' for a table cell."""
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    fmt = f"{{:,.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))}, n={len(values)})"


def ratio_cell(values: list[float], target: float | None = None, higher_is_better: bool = True) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    mid = median(values)
    text = f"**{mid:.2f}**" + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")
    if target is not None:
        met = mid >= target if higher_is_better else mid <= target
        text += f" {'met' if met else 'NOT met'} (target {'>=' if higher_is_better else '<='} {target:g})"
    return text


# --- child processes ----------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


def run_child(module: str, args: list[str], timeout: float = 1800, env: dict | None = None) -> dict:
    """Run ``python -m module --child ARGS`` in a fresh process; returns the dict it reports."""
    command = [sys.executable, "-m", module, "--child", *args]
    child_env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONWARNINGS": "ignore",
        # On a loaded machine the dashboard and its modules take longer than Ray's 60 s / 30 s to start.
        "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "180",
        "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
        **(env or {}),
    }
    child_env.pop("RAY_ADDRESS", None)  # a benchmark starts its own local Ray, never joins a cluster
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=child_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise ChildFailed(f"{' '.join(command[2:])}: timed out after {timeout:.0f} s") from error
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result.setdefault("process_seconds", time.perf_counter() - started)
            return result
    tail = "\n".join((done.stdout + "\n" + done.stderr).strip().splitlines()[-25:])
    raise ChildFailed(f"{' '.join(command[2:])} exited {done.returncode} without a result:\n{tail}")


def report_result(result: dict) -> None:
    """What a child prints last: one JSON line that ``run_child`` reads back."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- tables -------------------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def machine_markdown(info: dict[str, str]) -> str:
    return "\n".join(f"- {name}: {value}" for name, value in info.items()) + "\n"


def append_report(heading: str, info: dict[str, str], tables: list[Table], command: str) -> None:
    """Append one run (machine, command, tables) to BENCHMARKS.md under '## Runs'."""
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    if "\n## Runs\n" not in text:
        text = text.rstrip("\n") + "\n\n## Runs\n\nAppended by `make bench` (newest last).\n"
    section = [f"\n### {heading}\n", f"Command: `{command}`\n", machine_markdown(info)]
    section += ["\n" + table.markdown().replace("### ", "#### ", 1) for table in tables]
    REPORT.write_text(text.rstrip("\n") + "\n" + "\n".join(section))


def child_argv() -> list[str] | None:
    """The arguments after --child when this process is a benchmark child, else None."""
    return sys.argv[sys.argv.index("--child") + 1:] if "--child" in sys.argv else None


def start_ray(attempts: int = 3) -> float:
    """``pipelines.runtime.init_ray`` (a local Ray), retried: on a loaded machine a raylet can miss
    Ray's fixed 30 s start-up wait. Returns the seconds of the start that worked."""
    import ray

    from pipelines.runtime import init_ray

    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            init_ray()
            return time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception for this
            if attempt == attempts:
                raise
            log(f"ray.init failed ({str(error)[:120]}); retrying ({attempt}/{attempts})")
            ray.shutdown()
    raise AssertionError("unreachable")


def shuffled_batches(columns: dict, batch: int, generator):
    """Batches of ``batch`` rows of in-memory tensors (same length, on one device), in a fresh
    permutation drawn from ``generator``: the plain loops' stand-in for a worker's shard."""
    import torch

    first = next(iter(columns.values()))
    order = torch.randperm(len(first), generator=generator, device=first.device)
    for start in range(0, len(order), batch):
        pick = order[start : start + batch]
        yield {name: tensor[pick] for name, tensor in columns.items()}


def benchmark_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark's command line shares: --quick and --repeats."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=None, help="repetitions of each measurement")
    return parser
