"""Every benchmark, one table each, appended with the machine's description to BENCHMARKS.md.

    make bench                              # = python -m benchmarks.run_all
    python -m benchmarks.run_all --quick    # a smoke run (minutes; nothing appended unless --append)
    python -m benchmarks.run_all --only training,scale --repeats 5

Order: training (its Ray run leaves a trained model), extraction (with that model; leaves the
70,000 x 512 feature table), KMeans libraries side by side, the sweep at scale (synthetic tables
of 0.1, 1 and 5 million rows), the end-to-end stage times (read from the last `make run`).
About 20-25 minutes on an idle 2-core machine; --quick takes a few.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback

from benchmarks import extraction, kmeans, scale, stages, training
from benchmarks.common import SCRATCH, Table, append_report, load_average, log, machine

ALL = ("training", "extraction", "kmeans", "scale", "stages")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: checks that it all runs")
    parser.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions of each measurement (default 3)")
    parser.add_argument("--train-images", type=int, default=None, help="training images (default 10,000 x 2 epochs; full: 60000)")
    parser.add_argument("--run-dir", default=None, help="the `make run` directory holding stages.json")
    parser.add_argument("--append", action=argparse.BooleanOptionalAction, default=None,
                        help="append the tables to BENCHMARKS.md (default: yes, except with --quick)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(ALL)}")
    append = (not args.quick) if args.append is None else args.append

    SCRATCH.mkdir(exist_ok=True)
    info = machine()
    started = time.perf_counter()
    tables: list[Table] = []
    model = None
    for name in [n for n in ALL if n in chosen]:
        log(f"=== {name} ===")
        try:
            if name == "training":
                new, summary = training.run(args.quick, args.train_images, args.repeats)
                model = summary["model"]
            elif name == "extraction":
                new, _ = extraction.run(args.quick, repeats=args.repeats, model=model)
            elif name == "scale":
                new = scale.run(args.quick)
            elif name == "kmeans":
                new = kmeans.run(args.quick, repeats=args.repeats)
            else:
                new = stages.run(args.run_dir)
        except Exception:  # noqa: BLE001 - one failed benchmark must not lose the others' tables
            failure = Table(f"{name}: FAILED", ["error"])
            failure.add(traceback.format_exc().strip().splitlines()[-1].replace("|", "/"))
            print(traceback.format_exc(), file=sys.stderr)
            new = [failure]
        for table in new:
            print("\n" + table.markdown(), flush=True)
        tables += new
    info["load average at end"] = load_average()
    info["benchmark wall time"] = f"{(time.perf_counter() - started) / 60:.1f} min"
    if append:
        command = "make bench" if sys.argv[1:] == [] else "python -m benchmarks.run_all " + shlex.join(sys.argv[1:])
        append_report(f"Run of {info['date']} ({'quick' if args.quick else 'full'})", info, tables, command)
        log("appended to BENCHMARKS.md")
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
