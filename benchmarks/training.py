"""Training throughput: Ray Train (1 and 2 workers) against a plain PyTorch loop.

    python -m benchmarks.training [--quick] [--images 10000] [--epochs 2] [--repeats 3] [--workers 1,2]

Every path runs ``pipelines.train.train_epoch`` on the same model (seeded), global batch and
images of Fashion-MNIST's training split, for the same epochs, in a fresh process each:

* plain: the uint8 images in memory, a fresh permutation per epoch, batches of 64 sliced from
  it; torch threads = all cores; no Ray;
* Ray Train: ``pipelines.train.train`` as ``jobs.train`` runs it (Ray Data ingest, the shard
  cached in the worker, DDP over gloo when 2 workers), on a local Ray started by the process.

The figure of merit is the images/s of the epochs after the first (what ``metrics.jsonl``
reports: the training loop only); the first epoch, which carries the one-time costs, is shown
apart, and so is the whole call's wall time (Ray start-up, worker start-up, test-set evaluation,
checkpoints, figures), which matters for short runs.
"""

from __future__ import annotations

import json
import shutil
import time

from benchmarks.common import (SCRATCH, Table, benchmark_parser, child_argv, cpu_count, log, median, ratio_cell,
                               report_result, run_child, shuffled_batches, spread, start_ray)

TARGET = 0.9
BENCH_DIR = SCRATCH / "training"


def plain_epoch(images: int, batch: int, epochs: int, threads: int | None = None, seed: int = 0) -> dict:
    import torch

    from pipelines.config import TrainConfig
    from pipelines.data import fashion_mnist_arrays
    from pipelines.model import ModelSpec
    from pipelines.train import build_optimizer, initial_model, train_epoch, training_network

    torch.set_num_threads(threads := threads or cpu_count())
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
        batches = shuffled_batches({"image": x}, batch, generator)
        loss_sum, seen = train_epoch(network, batches, optimizer, "autoencoder", scheduler)  # as each Ray worker
        rates.append(seen / (time.perf_counter() - epoch_started))
        cpu_rates.append(seen / (time.process_time() - cpu_started))
        losses.append(loss_sum / seen)
    return {"images_per_s": rates, "images_per_cpu_s": cpu_rates, "train_loss": losses,
            "wall_seconds": time.perf_counter() - started, "threads": threads}


def ray_epoch(images: int, batch: int, epochs: int, workers: int, tag: str, overrides: dict, cache: bool = True) -> dict:
    from pipelines.config import DataConfig, TrainConfig
    from pipelines.train import train

    ray_seconds = start_ray()
    run_dir = BENCH_DIR / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(epochs=epochs, workers=workers, batch_size=batch, shard_cache_gib=2.0 if cache else 0.0,
                         **overrides)
    started = time.perf_counter()
    result = train(DataConfig(limit=images), config, run_dir)
    wall = time.perf_counter() - started
    return {"images_per_s": [row["images_per_s"] for row in result.history],
            "images_per_cpu_s": [row["train_images"] / row["cpu_seconds"] for row in result.history if row.get("cpu_seconds")],
            "train_loss": [row["train_loss"] for row in result.history], "wall_seconds": wall,
            "ray_init_seconds": ray_seconds, "model": str(result.model_path)}


def child(argv: list[str]) -> None:
    """argv: the path (plain or ray) and the JSON of its function's keyword arguments."""
    report_result((plain_epoch if argv[0] == "plain" else ray_epoch)(**json.loads(argv[1])))


def first_and_warm(run: dict, key: str = "images_per_s") -> tuple[float, float]:
    """A run's rate in its first epoch (start-up, Ray Data ingest) and in the later ones."""
    return run[key][0], median(run[key][1:] or run[key])


def run(quick: bool = False, images: int | None = None, repeats: int | None = None, workers: list | None = None,
        batch: int = 64, overrides: dict | None = None, epochs: int = 2) -> tuple[list[Table], dict]:
    images, repeats = images or (2000 if quick else 10_000), repeats or (1 if quick else 3)
    workers, overrides = [str(w) for w in workers or [1, 2]], overrides or {}
    variants = [("plain", {})] + [
        (f"ray-{w}", {"workers": int(w.rstrip("s")), "overrides": overrides, "cache": not w.endswith("s")}) for w in workers]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for rep in range(repeats):
        for name, extra in variants:
            log(f"training: repetition {rep + 1}/{repeats}, {name}, {images:,} images x {epochs} epochs")
            options = {"images": images, "batch": batch, "epochs": epochs, **extra} | ({"tag": f"{name}-{rep}"} if extra else {})
            result = run_child("benchmarks.training", ["ray" if extra else "plain", json.dumps(options)])
            log(f"  epochs at {', '.join(f'{rate:,.0f}' for rate in result['images_per_s'])} images/s; "
                f"call {result['wall_seconds']:.0f} s")
            results[name].append(result)

    table = Table(
        f"Training: Ray Train vs a plain PyTorch loop, autoencoder, {images:,} Fashion-MNIST images, "
        f"batch {batch}, {epochs} epochs, median of {repeats}",
        ["path", "epoch 1 images/s (ratio)", "later epochs images/s", "ratio to plain, later epochs",
         "images per CPU-second, later epochs (ratio)", "whole call s", "final train loss"],
    )
    plain = [first_and_warm(r) for r in results["plain"]]
    plain_cpu = [first_and_warm(r, "images_per_cpu_s")[1] for r in results["plain"]]
    summary: dict = {"plain": [first for first, _ in plain], "model": None}

    def add_row(label: str, runs: list[dict], baseline: bool = False) -> list[float]:
        rates = [first_and_warm(r) for r in runs]
        first_ratio = median([first / base[0] for (first, _), base in zip(rates, plain)])
        ratios = [warm / base[1] for (_, warm), base in zip(rates, plain)]
        cpu = [first_and_warm(r, "images_per_cpu_s")[1] for r in runs]
        table.add(label, f"{spread([first for first, _ in rates])} ({first_ratio:.2f})",
                  spread([warm for _, warm in rates]), "1.00" if baseline else ratio_cell(ratios, TARGET),
                  f"{spread(cpu)} ({median([c / b for c, b in zip(cpu, plain_cpu)]):.2f})",
                  spread([r["wall_seconds"] for r in runs], 1), f"{median([r['train_loss'][-1] for r in runs]):.4f}")
        return ratios

    add_row(f"plain loop, {cpu_count()} torch threads", results["plain"], baseline=True)
    for name in workers:
        runs = results[f"ray-{name}"]
        w = int(name.rstrip("s"))
        how = "Ray Data batches streamed every epoch (shard cache off)" if name.endswith("s") else "shards cached in the worker"
        summary[f"ray-{name}"] = add_row(f"Ray Train, {w} worker{'s' if w > 1 else ''}, {how}", runs)
        summary["model"] = runs[-1]["model"]
    table.notes += [
        "images/s: the training loop only (train_seen / epoch seconds, as metrics.jsonl reports it). Epoch 1 "
        "includes the one-time costs (Ray Data reading the shard into the worker's cache, DDP's first buckets, "
        "allocator warm-up); the later epochs are what the rest of a run costs, and the target (Ray/plain >= 0.9) "
        "is judged on them.",
        "images per CPU-second: the epoch's images over the CPU time of the training process(es) in the epoch (all "
        "their threads; Ray: `cpu_seconds` of metrics.jsonl, summed over workers). Other processes on a shared machine "
        "hardly change it, so its ratio is the load-independent view of the same comparison (it does not see CPU that "
        "Ray's other processes spend, nor cores left idle).",
        "whole call: from the call to its return (Ray: Ray Train and Ray Data start-up, test-set evaluation of "
        "min(images, 10,000) test images each epoch, checkpoints, figures; plain: reading the IDX files and the epochs).",
        f"subset: the first {images:,} training images (the full 60,000 with --images 60000); per repetition the "
        "plain loop and each other path run back to back in fresh processes.",
        *([f"TrainConfig overrides: {overrides}"] if overrides else []),
    ]
    return [table], summary


def main() -> None:
    argv = child_argv()
    if argv is not None:
        return child(argv)
    parser = benchmark_parser(__doc__, "2,000 images, one repetition (a smoke run)")
    parser.add_argument("--images", type=int, default=None, help="training images (default 10,000; 60,000 is the full split)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is reported apart)")
    parser.add_argument("--workers", default="1,2",
                        help="Ray Train worker counts to measure; a trailing s (1s) streams Ray Data batches (cache off)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--set", default="{}", help="JSON of TrainConfig overrides for the Ray runs")
    args = parser.parse_args()
    tables, _ = run(args.quick, args.images, args.repeats, args.workers.split(","), args.batch,
                    json.loads(args.set), args.epochs)
    for table in tables:
        print(table.markdown())


if __name__ == "__main__":
    main()
