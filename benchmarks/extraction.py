"""Feature extraction throughput: the Ray Data job against a plain loop.

    python -m benchmarks.extraction [--quick] [--images 70000] [--repeats 3] [--model PATH]

Both sides turn Fashion-MNIST's 70,000 images (train + test, ``--split all``) into the same
feature table (id, label, label_name, path, 512-d feature, recon_mse) with the same model, in a
fresh process each:

* plain: read the IDX files, ``torch.no_grad`` forward in batches of 512 with all cores, one
  ``pyarrow.parquet.ParquetWriter`` (the schema of ``pipelines.extract.feature_schema``);
* Ray: ``pipelines.extract.extract_features`` as ``jobs.extract`` runs it (Ray Data source,
  an actor pool of encoders, ``write_parquet``, the id check), with its default actor plan (one
  actor per core, one torch thread each), and with ``--actors 1`` (the cores in its threads).

Images/s are the images over the wall time of the whole call (reading to a closed table); the
Ray rows give it without and with ``ray.init`` (a cluster already up, as under ``ray job
submit``, vs a cold start).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks.common import (
    benchmark_parser,
    SCRATCH, Table, child_argv, cpu_count, log, ratio_cell, report_result, run_child, spread, start_ray,
)

TARGET = 1.0
BENCH_DIR = SCRATCH / "extraction"
BATCH = 512


def bench_model(path: str | None = None) -> Path:
    """The model to extract with: ``path`` when given (the training benchmark's), else a seeded
    untrained one (the speed does not depend on the weights)."""
    if path and Path(path).exists():
        return Path(path)
    from pipelines.model import Autoencoder, save_model

    import torch

    model_path = BENCH_DIR / "model.pt"
    if not model_path.exists():
        torch.manual_seed(0)
        save_model(model_path, Autoencoder(), mode="autoencoder", note="benchmark: untrained, seeded")
    return model_path


def plain_extract(model_path: str, out: str, images: int, batch: int, threads: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from pipelines.data import FASHION_MNIST_CLASSES, fashion_mnist_arrays
    from pipelines.feature_table import feature_schema, feature_table
    from pipelines.model import encode_batch, load_model

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, _ = load_model(model_path)
    limit = None if images >= 70_000 else images // 2  # as DataConfig.limit: the first N of each split
    parts = [fashion_mnist_arrays(split) for split in ("train", "test")]
    pixels = np.concatenate([p[0][:limit] for p in parts])
    labels = np.concatenate([p[1][:limit] for p in parts])
    names = np.asarray(FASHION_MNIST_CLASSES, dtype=object)
    schema = feature_schema(model.spec.code_dim)
    Path(out).mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(Path(out) / "features.parquet"), schema) as writer:
        for i in range(0, len(pixels), batch):
            codes, recon_mse = encode_batch(model, torch.from_numpy(pixels[i : i + batch].copy()))
            n = len(codes)
            rows = pa.table({"id": pa.array(np.arange(i, i + n), pa.int64()), "label": pa.array(labels[i : i + n]),
                             "label_name": pa.array(names[labels[i : i + n]], pa.string()),
                             "path": pa.nulls(n, pa.string())})
            writer.write_table(feature_table(rows, codes.numpy(), recon_mse.numpy()))
    seconds = time.perf_counter() - started
    return {"images": len(pixels), "seconds": seconds, "images_per_s": len(pixels) / seconds}


def ray_extract(model_path: str, out: str, images: int, batch: int, actors: int | None) -> dict:
    from pipelines.config import DataConfig, ExtractConfig
    from pipelines.extract import extract_features

    ray_seconds = start_ray()
    limit = None if images >= 70_000 else images // 2  # the limit applies to each split
    config = ExtractConfig(checkpoint=model_path, split="all", batch_size=batch, actors=actors, overwrite=True)
    started = time.perf_counter()
    extract_features(DataConfig(limit=limit), config, out)
    seconds = time.perf_counter() - started
    n = 70_000 if limit is None else 2 * limit
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "ray_init_seconds": ray_seconds,
            "images_per_s_with_init": n / (seconds + ray_seconds)}


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["plain", "ray"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=70_000)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--threads", type=int, default=cpu_count())
    parser.add_argument("--actors", type=int, default=None)
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    if args.kind == "plain":
        report_result(plain_extract(args.model, args.out, args.images, args.batch, args.threads))
    else:
        report_result(ray_extract(args.model, args.out, args.images, args.batch, args.actors))


def run(quick: bool = False, images: int | None = None, repeats: int | None = None, model: str | None = None,
        actor_counts: list[int | None] | None = None) -> tuple[list[Table], dict]:
    images = images or (4000 if quick else 70_000)
    repeats = repeats or (1 if quick else 3)
    actor_counts = actor_counts if actor_counts is not None else [None, 1]
    model_path = str(bench_model(model))
    features_out = str(BENCH_DIR / "features")
    variants = [("plain", ["plain"])] + [
        (f"ray-{a or 'default'}", ["ray"] + ([] if a is None else ["--actors", str(a)])) for a in actor_counts
    ]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for rep in range(repeats):
        for name, extra in variants:
            log(f"extraction: repetition {rep + 1}/{repeats}, {name}, {images:,} images")
            out = features_out if name == variants[-1][0] else str(BENCH_DIR / f"features-{name}")
            result = run_child("benchmarks.extraction", [*extra, "--model", model_path, "--out", out,
                                                         "--images", str(images)])
            log(f"  {result['images_per_s']:,.0f} images/s ({result['seconds']:.1f} s)")
            results[name].append(result)

    table = Table(
        f"Extraction: Ray Data job vs a plain loop, {images:,} Fashion-MNIST images -> Parquet, batch {BATCH}, "
        f"median of {repeats}",
        ["path", "images/s", "ratio to plain", "images/s incl. ray.init", "ratio incl. ray.init"],
    )
    plain = [r["images_per_s"] for r in results["plain"]]
    table.add(f"plain loop ({cpu_count()} torch threads, ParquetWriter)", spread(plain), "1.00", spread(plain), "1.00")
    summary: dict = {"plain": plain, "features": features_out}
    for name, _ in variants[1:]:
        runs = results[name]
        rates = [r["images_per_s"] for r in runs]
        cold = [r["images_per_s_with_init"] for r in runs]
        ratios = [a / b for a, b in zip(rates, plain)]
        summary[name] = ratios
        label = "default actor plan" if name == "ray-default" else f"--actors {name.split('-')[1]}"
        table.add(f"Ray Data job, {label}", spread(rates), ratio_cell(ratios, TARGET), spread(cold),
                  ratio_cell([a / b for a, b in zip(cold, plain)]))
    table.notes += [
        "images/s = images / wall seconds of the whole call: the plain loop from reading the IDX files to the closed "
        "Parquet file; the Ray job from `extract_features`'s call to its return (load, fingerprint, Ray Data "
        "execution, the id check), with Ray already up; 'incl. ray.init' adds a cold local Ray start.",
        f"model: {model_path}",
    ]
    return [table], summary


def main() -> None:
    argv = child_argv()
    if argv is not None:
        return child(argv)
    parser = benchmark_parser(__doc__, "4,000 images, one repetition (a smoke run)")
    parser.add_argument("--images", type=int, default=None, help="images (default 70,000: train + test)")
    parser.add_argument("--model", default=None, help="model file (default: a seeded untrained one)")
    parser.add_argument("--actors", default=None, help="comma-separated actor counts; 0 = the default plan")
    args = parser.parse_args()
    actors = None if args.actors is None else [int(a) or None for a in args.actors.split(",")]
    tables, _ = run(args.quick, args.images, args.repeats, args.model, actors)
    for table in tables:
        print(table.markdown())
    print(json.dumps({"features": str(BENCH_DIR / "features")}))


if __name__ == "__main__":
    main()
