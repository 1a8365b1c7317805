"""Extract features: Ray Data maps a trained encoder over the images into a Parquet feature table.

    python -m jobs.extract --checkpoint runs/ae --dataset fashion-mnist --split test --out runs/ae/features

One row per image: id, label, label_name, path, the 512-d feature and the reconstruction error;
the model's fingerprint, the source and the code version go in the table's metadata.
Connects to the cluster in $RAY_ADDRESS (as under `ray job submit`), else starts Ray locally.
An existing table is refused unless --overwrite; a failed run leaves none behind.
"""

import argparse

from pipelines.cli import add_config_arguments, config_from_arguments, run_job
from pipelines.config import DataConfig, ExtractConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the feature table folder to write (Parquet files)")
    add_config_arguments(parser, DataConfig)
    add_config_arguments(parser, ExtractConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        from pipelines.extract import extract_features

        data, config = config_from_arguments(args, DataConfig), config_from_arguments(args, ExtractConfig)
        extract_features(data, config, args.out)

    run_job("extract", job)


if __name__ == "__main__":
    main()
