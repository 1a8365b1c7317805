"""Stability sweep: the Ray Tune sweep against ``sweep_sequential`` (the same work in a loop).

    python -m benchmarks.sweep [--quick] [--seeds 3] [--resamples 0] [--full] [--features PATH]

The input is the 70,000 x 512 feature table the extraction benchmark wrote (made with the plain
extraction loop when missing). Both sides run ``pipelines.stability.evaluate_k`` for every
k = 2..10, in a fresh process each:

* sequential: ``sweep_sequential(X, config, classes)`` in one process; scikit-learn's OpenMP and
  BLAS use every core, as they would for a user who runs it by hand;
(The one-thread run that set the ceiling for trials side by side, 1.59x on 2 cores, is recorded in
BENCHMARKS.md and retired.)
* Tune: ``plan_sweep`` + ``run_trials`` (one trial per k, the default CPUs per trial) on a local
  Ray, started before the clock; writing the sweep's tables and figures is timed apart.

Default grid: k = 2..10 x 3 seeds, no resamples (``--full``: 10 seeds, the issue's grid; the
pipeline's default adds 100 bootstrap + 100 subsample refits per k, ``--resamples 100``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks.common import (
    benchmark_parser,
    SCRATCH, Table, child_argv, cpu_count, log, ratio_cell, report_result, run_child, spread, start_ray,
)

TARGET = 1.3
BENCH_DIR = SCRATCH / "sweep"


def load(features: str, rows: int | None):
    from pipelines.sweep_scores import sweep_data
    from pipelines.feature_table import read_features

    table = read_features(features)
    n = rows or len(table)
    return sweep_data(table.X[:n], ids=table.ids[:n], classes=table.labels[:n], class_names=table.class_names,
                      source=features)


def sequential(features: str, rows: int | None, config) -> dict:
    from pipelines.sweep_scores import sweep_sequential

    data = load(features, rows)
    started = time.perf_counter()
    results = sweep_sequential(data.X, config, data.classes)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(data.X), "fit_seconds": {k: r.seconds for k, r in results.items()},
            "ari": {k: (r.seed_agreement or {}).get("ari", {}).get("mean") for k, r in results.items()}}


def tune(features: str, rows: int | None, config, cpus_per_trial: float | None) -> dict:
    from pipelines.stability import load_k_result, plan_sweep, run_trials, transformed_points, write_outputs

    data = load(features, rows)
    out = BENCH_DIR / "tune"
    shutil.rmtree(out, ignore_errors=True)
    ray_seconds = start_ray()
    if cpus_per_trial is not None:
        config.cpus_per_trial = cpus_per_trial
    plan = plan_sweep(data, config, out, overwrite=True)
    started = time.perf_counter()
    run_trials(plan, transformed_points(plan))  # as sweep_sequential, the transform (if any) is timed
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = [load_k_result(out, k) for k in config.k_values]
    write_outputs(out, data, config, results)
    outputs = time.perf_counter() - started
    return {"seconds": seconds, "rows": len(data.X), "ray_init_seconds": ray_seconds, "outputs_seconds": outputs,
            "fit_seconds": {r.k: r.seconds for r in results},
            "ari": {r.k: (r.seed_agreement or {}).get("ari", {}).get("mean") for r in results}}


def ensure_features(features: str | None, min_rows: int) -> str:
    """The extraction benchmark's table when it has ``min_rows`` rows, else one of all 70,000
    images written now with the plain extraction loop."""
    import pyarrow.parquet as pq

    from benchmarks.extraction import BENCH_DIR as EXTRACTION_DIR, bench_model

    path = Path(features) if features else EXTRACTION_DIR / "features"
    files = sorted(path.glob("*.parquet"))
    try:
        rows = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    except Exception:  # noqa: BLE001 - a half-written table (an interrupted run) counts as none
        rows = 0
    if rows < min_rows:
        path = BENCH_DIR / "features"
        log(f"sweep: no feature table of {min_rows:,} rows; writing {path} with the plain extraction loop")
        images = max(min_rows, 10_000 if min_rows < 70_000 else 70_000)
        run_child("benchmarks.extraction", ["plain", "--model", str(bench_model()), "--out", str(path),
                                            "--images", str(images)])
    return str(path)


def child(argv: list[str]) -> None:
    from pipelines.config import StabilityConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["sequential", "tune"])
    parser.add_argument("--features", required=True)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--k", default="2-10")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=0)
    parser.add_argument("--cpus-per-trial", type=float, default=None)
    args = parser.parse_args(argv)
    config = StabilityConfig(k=args.k, seeds=args.seeds, resamples=args.resamples)
    if args.kind == "sequential":
        report_result(sequential(args.features, args.rows, config))
    else:
        report_result(tune(args.features, args.rows, config, args.cpus_per_trial))


def run(quick: bool = False, seeds: int | None = None, resamples: int = 0, repeats: int | None = None,
        features: str | None = None, rows: int | None = None, k: str = "2-10",
        cpus_per_trial: list[float | None] | None = None) -> tuple[list[Table], dict]:
    seeds = seeds or (2 if quick else 3)
    rows = rows or (10_000 if quick else None)
    k = "2-4" if quick and k == "2-10" else k
    repeats = repeats or (1 if quick else 2)
    cpus_per_trial = cpus_per_trial or [None]
    features = ensure_features(features, 1 if quick else rows or 70_000)
    common = ["--features", features, "--k", k, "--seeds", str(seeds), "--resamples", str(resamples)]
    common += ["--rows", str(rows)] if rows else []
    variants = [("sequential", ["sequential"])] + [
        (f"tune-{c or 'default'}", ["tune"] + ([] if c is None else ["--cpus-per-trial", str(c)])) for c in cpus_per_trial
    ]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for rep in range(repeats):
        for name, extra in variants:
            log(f"sweep: repetition {rep + 1}/{repeats}, {name}, k={k} x {seeds} seeds, {resamples} resamples")
            result = run_child("benchmarks.sweep", [*extra, *common], timeout=3600)
            log(f"  {result['seconds']:.1f} s")
            results[name].append(result)
    n_rows = results["sequential"][0]["rows"]
    table = Table(
        f"Stability sweep: Ray Tune vs the sequential loop, k={k} x {seeds} seeds, {resamples} resamples, "
        f"{n_rows:,} x 512 features, median of {repeats}",
        ["path", "seconds", "speed-up over sequential", "+ tables and figures s", "ray.init s"],
    )
    base = [r["seconds"] for r in results["sequential"]]
    table.add(f"sweep_sequential ({cpu_count()} OpenMP/BLAS threads)", spread(base, 1), "1.00", "", "")
    summary: dict = {}
    for name, _ in variants[1:]:
        runs = results[name]
        seconds = [r["seconds"] for r in runs]
        speedups = [b / s for b, s in zip(base, seconds)]
        summary[name] = speedups
        label = "default CPUs per trial" if name == "tune-default" else f"{name.split('-')[1]} CPUs per trial"
        table.add(f"Ray Tune, one trial per k, {label}", spread(seconds, 1), ratio_cell(speedups, TARGET),
                  spread([r["outputs_seconds"] for r in runs], 1), spread([r["ray_init_seconds"] for r in runs], 1))
    slowest = max(results["sequential"][0]["fit_seconds"].items(), key=lambda item: item[1])
    table.notes += [
        "seconds: sweep_sequential's call vs Tune's run_trials (trial start-up, the fits, per-k result files); "
        "writing the summaries and figures and starting Ray are shown apart.",
        "per-k seconds in the first sequential run: "
        + ", ".join(f"k={kk}: {s:.1f}" for kk, s in sorted(results["sequential"][0]["fit_seconds"].items(), key=lambda i: int(i[0])))
        + f" (slowest k={slowest[0]}).",
    ]
    if not quick and seeds < 10:
        table.notes.append(f"{seeds} seeds per k by default to fit `make bench`'s budget; `--full` runs the issue's 10.")
    return [table], summary


def main() -> None:
    argv = child_argv()
    if argv is not None:
        return child(argv)
    parser = benchmark_parser(__doc__, "10,000 rows, k=2-4 x 2 seeds, one repetition")
    parser.add_argument("--full", action="store_true", help="10 seeds per k (the issue's grid)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--resamples", type=int, default=0)
    parser.add_argument("--features", default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--k", default="2-10")
    parser.add_argument("--cpus-per-trial", default=None, help="comma-separated; 0 = the default")
    args = parser.parse_args()
    cpus = None if args.cpus_per_trial is None else [float(c) or None for c in args.cpus_per_trial.split(",")]
    tables, _ = run(args.quick, 10 if args.full else args.seeds, args.resamples, args.repeats, args.features,
                    args.rows, args.k, cpus)
    for table in tables:
        print(table.markdown())


if __name__ == "__main__":
    main()
