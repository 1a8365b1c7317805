"""Train the autoencoder or the classifier with Ray Train.

    python -m jobs.train --mode autoencoder --dataset fashion-mnist --epochs 10 --workers 2 --out runs/ae

Connects to the cluster in $RAY_ADDRESS (as under `ray job submit`), else starts Ray locally.
A rerun with the same --out resumes after the last finished epoch (more --epochs: training goes on).
"""

import dataclasses

from pipelines.cli import (add_config_arguments, add_output_argument, config_from_arguments, input_path, job_parser,
                           output_path, resolved_data, run_job)
from pipelines.config import DataConfig, TrainConfig
from pipelines.rundir import LOG_FILE


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("train", __doc__)
    add_output_argument(parser, "the run directory: model, metrics and figures", "--run-dir")
    add_config_arguments(parser, DataConfig)
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        # Every check that needs no Ray comes first: a mistake fails in a second, having written nothing.
        from pipelines.data import check_source

        data = resolved_data(config_from_arguments(args, DataConfig))
        config = config_from_arguments(args, TrainConfig)
        config = dataclasses.replace(config, init_from=input_path(config.init_from, "--init-from"))
        run_dir = output_path(args.out, "--out")
        check_source(data)
        from pipelines.runtime import init_ray
        from pipelines.train import train

        init_ray(log_file=run_dir / LOG_FILE)
        train(data, config, run_dir)

    run_job("train", job)


if __name__ == "__main__":
    main()
