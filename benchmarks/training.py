"""Training throughput: Ray Train (1 and 2 workers) against a plain PyTorch loop.

    python -m benchmarks.training [--quick] [--images 20000] [--repeats 3] [--workers 1,2]

Both sides run ``pipelines.training.train_epoch`` on the same model (seeded), global batch and
images of Fashion-MNIST's training split, one epoch each, in a fresh process each:

* plain: the uint8 images in memory, a fresh permutation per epoch, batches of 64 sliced from
  it; torch threads = all cores; no Ray;
* Ray Train: ``pipelines.training.train`` as ``jobs.train`` runs it (Ray Data ingest with the
  local shuffle buffer, DDP over gloo when 2 workers), on a local Ray started by the process.

The figure of merit is the epoch's images/s (what ``metrics.jsonl`` reports: the training loop
only); the table also shows the whole call's wall time (Ray start-up, worker start-up, test-set
evaluation, checkpoints, figures), which matters for short runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from benchmarks.common import (
    benchmark_parser,
    SCRATCH, Table, child_argv, cpu_count, log, median, ratio_cell, report_result, run_child, spread, start_ray,
)

TARGET = 0.9
BENCH_DIR = SCRATCH / "training"


def plain_epoch(images: int, batch: int, epochs: int, threads: int, seed: int = 0) -> dict:
    import torch

    from pipelines.config import TrainConfig
    from pipelines.data import fashion_mnist_arrays
    from pipelines.model import ModelSpec
    from pipelines.training import build_optimizer, initial_model, train_epoch, training_network

    torch.set_num_threads(threads)
    started = time.perf_counter()
    data, _ = fashion_mnist_arrays("train")
    x = torch.from_numpy(data[:images].copy())
    config = TrainConfig(epochs=epochs, batch_size=batch, seed=seed, workers=1)
    network = training_network(initial_model(ModelSpec(), config), "autoencoder")
    optimizer, scheduler = build_optimizer(network, config, steps_per_epoch=-(-len(x) // batch))
    generator = torch.Generator().manual_seed(seed)
    rates, cpu_rates, losses = [], [], []
    for _ in range(epochs):
        epoch_started, cpu_started = time.perf_counter(), time.process_time()
        order = torch.randperm(len(x), generator=generator)
        batches = ({"image": x[order[i : i + batch]]} for i in range(0, len(x), batch))
        loss_sum, seen = train_epoch(network, batches, optimizer, "autoencoder", scheduler)  # as each Ray worker
        rates.append(seen / (time.perf_counter() - epoch_started))
        cpu_rates.append(seen / (time.process_time() - cpu_started))
        losses.append(loss_sum / seen)
    return {"images_per_s": rates, "images_per_cpu_s": cpu_rates, "train_loss": losses,
            "wall_seconds": time.perf_counter() - started, "threads": threads}


def ray_epoch(images: int, batch: int, epochs: int, workers: int, tag: str, overrides: dict, cache: bool = True) -> dict:
    from pipelines import training
    from pipelines.config import DataConfig, TrainConfig
    from pipelines.training import train

    if not cache:  # the workers read this from the loop config the driver sends them
        training.SHARD_CACHE_BYTES = 0

    ray_seconds = start_ray()
    run_dir = BENCH_DIR / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(epochs=epochs, workers=workers, batch_size=batch, **overrides)
    started = time.perf_counter()
    result = train(DataConfig(limit=images), config, run_dir)
    wall = time.perf_counter() - started
    return {"images_per_s": [row["images_per_s"] for row in result.history],
            "images_per_cpu_s": [row["train_images"] / row["cpu_seconds"] for row in result.history if row.get("cpu_seconds")],
            "train_loss": [row["train_loss"] for row in result.history], "wall_seconds": wall,
            "ray_init_seconds": ray_seconds, "model": str(result.model_path)}


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["plain", "ray"])
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=cpu_count())
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--set", default="{}", help="JSON of TrainConfig overrides (Ray only)")
    parser.add_argument("--no-cache", action="store_true", help="Ray: stream Ray Data batches every epoch")
    args = parser.parse_args(argv)
    if args.kind == "plain":
        report_result(plain_epoch(args.images, args.batch, args.epochs, args.threads))
    else:
        report_result(ray_epoch(args.images, args.batch, args.epochs, args.workers, args.tag, json.loads(args.set),
                                cache=not args.no_cache))


def run(quick: bool = False, images: int | None = None, repeats: int | None = None, workers: list | None = None,
        batch: int = 64, overrides: dict | None = None) -> tuple[list[Table], dict]:
    images = images or (2000 if quick else 20_000)
    repeats = repeats or (1 if quick else 3)
    workers = workers or [1, 2]
    overrides = overrides or {}
    workers = [str(w) for w in workers]
    variants = [("plain", [])] + [
        (f"ray-{w}", ["--workers", w.rstrip("s"), "--set", json.dumps(overrides)] + (["--no-cache"] if w.endswith("s") else []))
        for w in workers
    ]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for rep in range(repeats):
        for name, extra in variants:
            kind = "plain" if name == "plain" else "ray"
            log(f"training: repetition {rep + 1}/{repeats}, {name}, {images:,} images")
            result = run_child("benchmarks.training", [kind, "--images", str(images), "--batch", str(batch),
                                                       "--tag", f"{name}-{rep}", *extra])
            log(f"  {median(result['images_per_s']):,.0f} images/s in the epoch; call {result['wall_seconds']:.0f} s")
            results[name].append(result)

    table = Table(
        f"Training: Ray Train vs a plain PyTorch loop, autoencoder, {images:,} Fashion-MNIST images, "
        f"batch {batch}, 1 epoch, median of {repeats}",
        ["path", "epoch images/s", "ratio to plain (same repetition)", "images per CPU-second (ratio)", "whole call s",
         "call images/s incl. start-up", "final train loss"],
    )
    plain = [median(r["images_per_s"]) for r in results["plain"]]
    plain_cpu = [median(r["images_per_cpu_s"]) for r in results["plain"]]
    table.add(f"plain loop, {cpu_count()} torch threads", spread(plain), "1.00", f"{spread(plain_cpu)} (1.00)",
              spread([r["wall_seconds"] for r in results["plain"]], 1),
              spread([images / r["wall_seconds"] for r in results["plain"]]), f"{median([r['train_loss'][-1] for r in results['plain']]):.4f}")
    summary = {"plain": plain, "model": None}
    for name in workers:
        runs = results[f"ray-{name}"]
        w = int(name.rstrip("s"))
        rates = [median(r["images_per_s"]) for r in runs]
        ratios = [rate / base for rate, base in zip(rates, plain)]
        summary[f"ray-{name}"] = ratios
        summary["model"] = runs[-1]["model"]
        how = "Ray Data batches streamed every epoch (shard cache off)" if name.endswith("s") else "shards cached in the worker"
        cpu = [median(r["images_per_cpu_s"]) for r in runs]
        cpu_ratio = median([c / b for c, b in zip(cpu, plain_cpu)])
        summary[f"ray-{name}-cpu"] = [c / b for c, b in zip(cpu, plain_cpu)]
        table.add(f"Ray Train, {w} worker{'s' if w > 1 else ''}, {how}", spread(rates), ratio_cell(ratios, TARGET),
                  f"{spread(cpu)} ({cpu_ratio:.2f})",
                  spread([r["wall_seconds"] for r in runs], 1), spread([images / (r["wall_seconds"] + r["ray_init_seconds"]) for r in runs]),
                  f"{median([r['train_loss'][-1] for r in runs]):.4f}")
    table.notes += [
        "epoch images/s: the training loop only (train_seen / epoch seconds, as metrics.jsonl reports it); "
        "the target (Ray/plain >= 0.9) is on this column.",
        "images per CPU-second: the epoch's images over the CPU time of the training process(es) in the epoch (all "
        "their threads; Ray: `cpu_seconds` of metrics.jsonl, summed over workers). Other processes on a shared machine "
        "hardly change it, so its ratio is the load-independent view of the same comparison (it does not see CPU that "
        "Ray's other processes spend, nor cores left idle).",
        "whole call: `pipelines.training.train` from the call to its return (Ray Train and Ray Data start-up, "
        "test-set evaluation of min(images, 10,000) test images, checkpoint, figures); the images/s with start-up "
        "also counts `ray.init`. The plain loop's whole call is reading the IDX files plus the epoch.",
        f"subset: the first {images:,} training images (the full 60,000 with --images 60000); per repetition the "
        "plain loop and each Ray variant run back to back in fresh processes.",
    ]
    if overrides:
        table.notes.append(f"TrainConfig overrides: {overrides}")
    return [table], summary


def main() -> None:
    argv = child_argv()
    if argv is not None:
        return child(argv)
    parser = benchmark_parser(__doc__, "2,000 images, one repetition (a smoke run)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 20,000; 60,000 is the full split)")
    parser.add_argument("--workers", default="1,2",
                        help="Ray Train worker counts to measure; a trailing s (1s) streams Ray Data batches (cache off)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--set", default="{}", help="JSON of TrainConfig overrides for the Ray runs")
    args = parser.parse_args()
    tables, _ = run(args.quick, args.images, args.repeats, args.workers.split(","), args.batch,
                    json.loads(args.set))
    for table in tables:
        print(table.markdown())


if __name__ == "__main__":
    main()
