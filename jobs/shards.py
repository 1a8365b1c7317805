"""Prepare Parquet image shards: any source (an image folder, Fashion-MNIST) decoded and resized
once, then read by every later run with `--dataset parquet --data-dir OUT`.

    python -m jobs.shards --dataset images --data-dir ../shared/data/faces/att_faces --image-size 112x92 --out shards/orl

Rows keep the image schema (id, image, label, label_name, path); the image is Arrow's own
fixed_shape_tensor, so pyarrow reads the shards without Ray. Written atomically: the folder appears
complete or not at all; an existing one is refused unless --overwrite.
"""

import argparse

from pipelines.cli import add_config_arguments, config_from_arguments, run_job
from pipelines.config import SPLITS, DataConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the shard folder to write (Parquet files)")
    parser.add_argument("--split", default="all", choices=SPLITS, help="which images to write (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing shard folder")
    add_config_arguments(parser, DataConfig)
    args = parser.parse_args(argv)

    def job() -> None:
        from pipelines.data import load_images, write_image_shards
        from pipelines.runtime import init_ray

        init_ray()
        source = load_images(config_from_arguments(args, DataConfig), args.split)
        write_image_shards(source, args.out, overwrite=args.overwrite)
        print(f"[shards] {source.num_images:,} images of {source.name}/{args.split} "
              f"({source.image_size}, {len(source.class_names)} classes) -> {args.out}", flush=True)

    run_job("shards", job)


if __name__ == "__main__":
    main()
