"""Cluster stability: KMeans over k x seeds with Ray Tune, scored between seeds, on resamples and
against the classes.

    python -m jobs.stability --features RUN/features --k 2-10 --seeds 10 --out RUN/stability

Connects to the cluster in $RAY_ADDRESS, else starts Ray locally. A rerun with the same --out
computes only the k that are missing there; results of another table or other settings are
refused unless --overwrite.
"""

import argparse

from pipelines.cli import add_config_arguments, config_from_arguments, run_job
from pipelines.config import StabilityConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="the feature table (jobs.extract's output)")
    parser.add_argument("--out", required=True, help="where the results, tables and figures go")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the results in --out (needed when they are of another table or settings)")
    add_config_arguments(parser, StabilityConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        from pipelines.stability import plan_sweep, run_sweep
        from pipelines.sweep_scores import load_sweep_data
        from pipelines.runtime import init_ray, setup_logging

        setup_logging()
        config = config_from_arguments(args, StabilityConfig)
        # Every check that can fail fast runs before Ray starts; a finished sweep needs no Ray.
        plan = plan_sweep(load_sweep_data(args.features), config, args.out, overwrite=args.overwrite)
        if plan.todo:
            init_ray()
        print(f"featurelens stability: {run_sweep(plan).line()}")

    run_job("stability", job)


if __name__ == "__main__":
    main()
