"""Train the autoencoder or the classifier with Ray Train.

    python -m jobs.train --mode autoencoder --dataset fashion-mnist --epochs 10 --workers 2 --run-dir runs/ae

Connects to the cluster in $RAY_ADDRESS (as under `ray job submit`), else starts Ray locally.
A rerun with the same --run-dir resumes after the last finished epoch.
"""

import argparse

from pipelines.cli import add_config_arguments, config_from_arguments, run_job
from pipelines.config import DataConfig, TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="where the model, metrics and figures go")
    add_config_arguments(parser, DataConfig)
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        # The options are checked first: a bad one fails in a moment, before torch and Ray load.
        data, config = config_from_arguments(args, DataConfig), config_from_arguments(args, TrainConfig)
        from pipelines.runtime import init_ray
        from pipelines.train import train

        init_ray()
        train(data, config, args.run_dir)

    run_job("train", job)


if __name__ == "__main__":
    main()
