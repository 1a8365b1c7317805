"""Class re-clustering: group the classes by how they spread over the clusters of one k of a
stability sweep, for every seed, and report the groups that recur.

    python -m jobs.recluster --stability runs/ae-stability --k 2 --k-re 2 --method membership --out runs/ae-recluster

Reads only the sweep's count tables (no feature table) and needs no Ray.
"""

from pipelines.cli import (add_config_arguments, add_output_argument, config_from_arguments, input_path, job_parser,
                           output_path, run_job)
from pipelines.config import ReclusterConfig


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("recluster", __doc__)
    parser.add_argument("--stability", required=True, metavar="DIR", help="the output folder of jobs.stability")
    add_output_argument(parser, "where the groups, tables and figures go")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_arguments(parser, ReclusterConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        config = config_from_arguments(args, ReclusterConfig)
        stability = input_path(args.stability, "--stability")
        from pipelines.recluster import run_recluster

        outcome = run_recluster(stability, config, output_path(args.out, "--out"), overwrite=args.overwrite)
        print(f"featurelens recluster: {outcome.line()} -> {outcome.out}")

    run_job("recluster", job)


if __name__ == "__main__":
    main()
