"""The sweep at scale: synthetic feature tables of 0.1, 1 and 5 million rows, peak memory per process and time.

    python -m benchmarks.scale [--rows 100000,1000000,5000000] [--sample-size 20000] [--quick]

Each table (512-d float32 in the documented schema, `path` null, ten Gaussian blobs whose index
is the `label`) is written batch by batch with plain pyarrow under .bench/scale/ and kept for a
rerun. The sweep runs as a user runs it, `python -m jobs.stability --features T --k 10 --seeds 3`
with the default resamples, in a fresh process with its own local Ray, while this process reads
every 0.5 s the peak resident memory (VmHWM) of each process of that tree: the driver, Ray's
daemons, the Tune trials, the assignment pass's actors.

The plain baseline, in the same run at the second size: the whole table in one process
(``load_sweep_data`` of every row, then ``sweep_sequential``: fits and the assignment pass in
memory), without resamples so that it stays short; its peak memory per row is what the sweep
needed before it sampled.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, SCRATCH, Table, child_argv, log, report_result, run_child

BENCH_DIR = SCRATCH / "scale"
ROWS_PER_FILE, ROWS_PER_GROUP, WIDTH, BLOBS = 1_048_576, 65_536, 512, 10


def write_table(rows: int, folder: Path) -> Path:
    """Ten blobs of 512-d points, ``rows`` of them, written batch by batch (memory: one batch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.feature_table import feature_schema
    from pipelines.storage import atomic_output

    if folder.is_dir():
        return folder
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 0.6, (BLOBS, WIDTH)).astype(np.float32)
    schema = feature_schema(WIDTH)
    with atomic_output(folder, folder=True) as tmp:
        for file_start in range(0, rows, ROWS_PER_FILE):
            with pq.ParquetWriter(tmp / f"part-{file_start // ROWS_PER_FILE:03d}.parquet", schema,
                                  compression="none") as writer:
                for start in range(file_start, min(rows, file_start + ROWS_PER_FILE), ROWS_PER_GROUP):
                    n = min(ROWS_PER_GROUP, rows - start)
                    label = rng.integers(0, BLOBS, n)
                    X = centres[label] + rng.standard_normal((n, WIDTH), dtype=np.float32)
                    writer.write_table(pa.table({
                        "id": pa.array(np.arange(start, start + n), pa.int64()), "label": pa.array(label, pa.int64()),
                        "label_name": pa.nulls(n, pa.string()), "path": pa.nulls(n, pa.string()),
                        "feature": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), WIDTH),
                        "recon_mse": pa.nulls(n, pa.float32())}, schema=schema))
    return folder


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it (from /proc: ppid of each process)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def peak_memory(pid: int) -> tuple[str, int] | None:
    """(name, peak RSS in bytes) of a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80].strip()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return (name or status.split()[1], int(found.group(1)) * 1024) if found else None


def run_watched(command: list[str], env: dict) -> tuple[float, dict[int, tuple[str, int]], str]:
    """Run ``command``; its seconds, the peak RSS of every process of its tree, its output."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, tuple[str, int]] = {}

    def watch() -> None:
        while process.poll() is None:
            for pid in process_tree(process.pid):
                found = peak_memory(pid)
                if found and found[1] > peaks.get(pid, ("", 0))[1]:
                    peaks[pid] = found
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = process.communicate()[0]
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return time.perf_counter() - started, peaks, output


def sweep(table: Path, rows: int, sample_size: int, seeds: int) -> dict:
    out = BENCH_DIR / f"sweep-{rows}"
    command = [sys.executable, "-m", "jobs.stability", "--features", str(table), "--out", str(out), "--k", "10",
               "--seeds", str(seeds), "--sample-size", str(sample_size), "--overwrite"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    seconds, peaks, output = run_watched(command, env)
    summary = np.genfromtxt(out / "summary.csv", delimiter=",", names=True)
    top = sorted(peaks.values(), key=lambda item: -item[1])
    return {"rows": rows, "seconds": seconds, "peak": top[0][1], "peak_process": top[0][0], "processes": len(peaks),
            "acc": float(summary["acc_mean"]), "log": output.strip().splitlines()[-1]}


def baseline_child(argv: list[str]) -> None:
    from pipelines.config import StabilityConfig
    from pipelines.sweep_scores import load_sweep_data, sweep_sequential

    table, seeds = argv[0], int(argv[1])
    started = time.perf_counter()
    data = load_sweep_data(table)
    results = sweep_sequential(data.X, StabilityConfig(k="10", seeds=seeds, resamples=0), data.classes)
    report_result({"rows": len(data.X), "seconds": time.perf_counter() - started, "acc": results[10].runs[0]["acc"],
                   "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def run(quick: bool = False, rows: list[int] | None = None, sample_size: int = 20_000, seeds: int = 3) -> list[Table]:
    rows = rows or ([20_000, 100_000] if quick else [100_000, 1_000_000, 5_000_000])
    results = []
    for n in rows:
        log(f"scale: {n:,} rows: table")
        table = write_table(n, BENCH_DIR / f"table-{n}")
        log(f"scale: {n:,} rows: sweep (k=10 x {seeds} seeds, sample {sample_size:,})")
        results.append(sweep(table, n, sample_size, seeds))
        log(f"  {results[-1]['seconds']:.0f} s, peak {results[-1]['peak'] / 2**30:.2f} GiB ({results[-1]['peak_process']})")
    base_rows = rows[min(1, len(rows) - 1)]  # the second size: large enough that Python's own memory is small beside it
    base = run_child("benchmarks.scale", [str(BENCH_DIR / f"table-{base_rows}"), str(seeds)], timeout=3600)
    gib = 2 ** 30
    out = Table(f"Stability sweep at scale: k = 10 x {seeds} seeds, default resamples, sample of {sample_size:,} rows, "
                "512-d synthetic blobs", ["rows", "wall s", "µs per row", "peak RSS, largest process",
                                          "which process", "processes", "ACC"])
    for result in results:
        out.add(f"{result['rows']:,}", f"{result['seconds']:.0f}", f"{1e6 * result['seconds'] / result['rows']:.1f}",
                f"{result['peak'] / gib:.2f} GiB", f"`{result['peak_process'][:48]}`", result["processes"],
                f"{result['acc']:.3f}")
    out.add(f"{base['rows']:,} (baseline: in memory, no resamples)", f"{base['seconds']:.0f}",
            f"{1e6 * base['seconds'] / base['rows']:.1f}", f"{base['peak'] / gib:.2f} GiB", "one process", 1,
            f"{base['acc']:.3f}")
    if len(results) >= 2:
        first, last = results[-2], results[-1]
        exponent = math.log(last["seconds"] / first["seconds"]) / math.log(last["rows"] / first["rows"])
        out.notes.append(f"time grows as n^{exponent:.2f} from {first['rows']:,} to {last['rows']:,} rows "
                         "(target: at most n^1.1)")
    same = next(result for result in results if result["rows"] == base_rows)
    out.notes.append(f"at {base_rows:,} rows the largest process of the sampled sweep peaks at {same['peak'] / gib:.2f} "
                     f"GiB, the in-memory baseline at {base['peak'] / gib:.2f} GiB ({base['peak'] / same['peak']:.1f}x)")
    return [out]


def main() -> None:
    argv = child_argv()
    if argv is not None:
        return baseline_child(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 and 100,000 rows")
    parser.add_argument("--rows", default=None, help="comma-separated table sizes")
    parser.add_argument("--sample-size", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = [int(value) for value in args.rows.split(",")] if args.rows else None
    for table in run(args.quick, rows, args.sample_size, args.seeds):
        print(table.markdown())


if __name__ == "__main__":
    main()
