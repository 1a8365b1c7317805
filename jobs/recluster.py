"""Class re-clustering: group the classes by how they spread over the clusters of one k of a
stability sweep, for every seed, and report the groups that recur.

    python -m jobs.recluster --stability RUN/stability --k 2 --k-re 2 --method membership --out RUN/recluster

--features defaults to the table the sweep recorded. Needs no Ray.
"""

import argparse

from pipelines.cli import add_config_arguments, config_from_arguments, run_job
from pipelines.config import ReclusterConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stability", required=True, help="the output folder of jobs.stability")
    parser.add_argument("--features", default=None, help="the feature table it swept (default: the one it recorded)")
    parser.add_argument("--out", required=True, help="where the groups, tables and figures go")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_arguments(parser, ReclusterConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        from pipelines.recluster import run_recluster

        config = config_from_arguments(args, ReclusterConfig)
        outcome = run_recluster(args.stability, args.features, config, args.out, overwrite=args.overwrite)
        print(f"featurelens recluster: {outcome.line()}")

    run_job("recluster", job)


if __name__ == "__main__":
    main()
