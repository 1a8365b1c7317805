"""Cluster stability: KMeans over k x seeds with Ray Tune, scored between seeds, on resamples and
against the classes.

    python -m jobs.stability --features runs/ae-features --k 2-10 --seeds 10 --out runs/ae-stability

Connects to the cluster in $RAY_ADDRESS, else starts Ray locally. A rerun with the same --out
computes only the k that are missing there; results of another table or other settings are
refused unless --overwrite.
"""

import dataclasses

from pipelines.cli import (add_config_arguments, add_output_argument, config_from_arguments, input_path, input_paths,
                           job_parser, output_path, run_job)
from pipelines.config import StabilityConfig


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("stability", __doc__)
    parser.add_argument("--features", required=True, metavar="DIR", help="the feature table (jobs.extract's output)")
    add_output_argument(parser, "where the results, tables and figures go")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the results in --out (needed when they are of another table or settings)")
    add_config_arguments(parser, StabilityConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        from pipelines.stability import plan_sweep, run_sweep
        from pipelines.sweep_scores import load_sweep_data
        from pipelines.runtime import init_ray, log_file_beside, setup_logging

        config = config_from_arguments(args, StabilityConfig)
        config = dataclasses.replace(config, compare_runs=input_paths(config.compare_runs, "--compare-runs"))
        features, out = input_path(args.features, "--features"), output_path(args.out, "--out")
        # Every check that can fail fast runs before Ray starts; a finished sweep needs no Ray.
        plan = plan_sweep(load_sweep_data(features, config.sample_size), config, out, overwrite=args.overwrite)
        setup_logging()
        if plan.todo:
            init_ray(log_file=log_file_beside(out))
        outcome = run_sweep(plan)
        print(f"featurelens stability: {outcome.line()} -> {outcome.out}")

    run_job("stability", job)


if __name__ == "__main__":
    main()
