"""Prepare Parquet image shards: any source (an image folder, Fashion-MNIST) decoded and resized
once, then read by every later run with `--dataset parquet --data-dir OUT`.

    python -m jobs.shards --dataset images --data-dir ../shared/data/faces/att_faces --image-size 112x92 --out shards/orl

Rows keep the image schema (id, image, label, label_name, path); the image is Arrow's own
fixed_shape_tensor, so pyarrow reads the shards without Ray. Written atomically: the folder appears
complete or not at all; an existing one is refused unless --overwrite.
"""

from pipelines.cli import (add_config_arguments, add_output_argument, config_from_arguments, job_parser, output_path,
                           resolved_data, run_job)
from pipelines.config import SPLITS, DataConfig


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("shards", __doc__)
    add_output_argument(parser, "the shard folder to write (Parquet files)")
    parser.add_argument("--split", default="all", choices=SPLITS, help="which images to write (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")
    add_config_arguments(parser, DataConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        from pipelines.data import check_source, load_images, write_image_shards
        from pipelines.storage import OutputExistsError

        data, out = resolved_data(config_from_arguments(args, DataConfig)), output_path(args.out, "--out")
        check_source(data)
        if out.exists() and not args.overwrite:
            raise OutputExistsError(f"--out {args.out} already exists; pass --overwrite to replace it")
        from pipelines.runtime import init_ray, log_file_beside

        init_ray(log_file=log_file_beside(out))
        source = load_images(data, args.split)
        write_image_shards(source, out, overwrite=args.overwrite)
        print(f"[shards] {source.num_images:,} images of {source.name}/{args.split} "
              f"({source.image_size}, {len(source.class_names)} classes) -> {out}", flush=True)

    run_job("shards", job)


if __name__ == "__main__":
    main()
