"""Extract features: Ray Data maps a trained encoder over the images into a Parquet feature table.

    python -m jobs.extract --checkpoint runs/ae --dataset fashion-mnist --split test --out runs/ae-features

One row per image: id, label, label_name, path, the 512-d feature and the reconstruction error;
the model's fingerprint, the source and the code version go in the table's metadata.
Connects to the cluster in $RAY_ADDRESS (as under `ray job submit`), else starts Ray locally.
An existing table is refused unless --overwrite; a failed run leaves none behind.
"""

import dataclasses

from pipelines.cli import (add_config_arguments, add_output_argument, config_from_arguments, input_path, job_parser,
                           output_path, resolved_data, run_job)
from pipelines.config import DataConfig, ExtractConfig
from pipelines.storage import refuse_existing


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("extract", __doc__)
    add_output_argument(parser, "the feature table folder to write (Parquet files)")
    add_config_arguments(parser, DataConfig)
    add_config_arguments(parser, ExtractConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        data = resolved_data(config_from_arguments(args, DataConfig))
        config = config_from_arguments(args, ExtractConfig)
        if config.checkpoint is None:
            raise ValueError("--checkpoint is required: a training run directory or its model.pt")
        config = dataclasses.replace(config, checkpoint=input_path(config.checkpoint, "--checkpoint"))
        out = output_path(args.out, "--out")
        refuse_existing(out, config.overwrite)
        check_model_fits(data, config)
        from pipelines.extract import extract_features
        from pipelines.runtime import init_ray, log_file_beside

        init_ray(log_file=log_file_beside(out))
        extract_features(data, config, out)

    run_job("extract", job)


def check_model_fits(data: DataConfig, config: ExtractConfig) -> None:
    """The model's input size and color against the images', before Ray starts (torch loads the model)."""
    from pipelines.data import ImageSource, check_source

    height, width, channels = check_source(data)  # the data first: it needs no torch
    from pipelines.extract import check_source_matches
    from pipelines.model import load_model

    model, _ = load_model(config.checkpoint)
    shape = ImageSource(dataset=None, name=data.dataset if data.data_dir is None else data.data_dir, split=config.split,
                        num_images=0, class_names=[], height=height, width=width, channels=channels)
    check_source_matches(shape, model.spec)


if __name__ == "__main__":
    main()
