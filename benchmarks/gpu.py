"""GPU checks and timings (run by benchmarks/gpu.sh, which installs what this needs first).

    python -m benchmarks.gpu [--device cuda] [--limit N] [--out DIR] [--deadline SECONDS]

1. Correctness: features (codes and reconstruction errors) of the same model on the GPU equal
   the CPU's within tolerance, in strict fp32 and with PyTorch's default TF32 convolutions; one
   Adam step gives the same weights; the Ray Data GPU job's table equals the CPU's features.
2. One autoencoder epoch on Fashion-MNIST's 60,000 training images, batch 64, one GPU:
   a plain loop fed from host memory, the same loop fed from a device-resident uint8 copy of the
   data, and Ray Train with one GPU worker (its shards cached on the GPU, the default for data
   this small, and streamed by Ray Data per batch, as before). Target: <= 3 s.
3. Extraction of the 70,000 images to Parquet: a plain GPU loop and the Ray Data job with one GPU
   actor, each in a fresh process; images/s including start-up. Target: >= 20,000 images/s.

Every section runs even when another fails; the table is printed at the end and written, with the
raw figures, to OUT/gpu_table.md and OUT/gpu_results.json. ``--device cpu --limit 2000`` runs the
same steps on a CPU (a dry run of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import traceback
from pathlib import Path

from benchmarks.common import SCRATCH, Table, machine, run_child, start_ray

EPOCH_TARGET_S = 3.0
EXTRACT_TARGET = 20_000
TRAIN_IMAGES = 60_000
ALL_IMAGES = 70_000
EXTRACT_BATCH = 4096
STARTED = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - STARTED


def say(message: str) -> None:
    print(f"[gpu {elapsed():6.1f} s] {message}", flush=True)


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --- 1. correctness ------------------------------------------------------------------------------


def compare(name: str, cpu, gpu, rtol: float) -> dict:
    """Largest difference relative to the CPU values' scale: a pass/fail per tolerance."""
    gpu = gpu.detach().float().cpu()
    cpu = cpu.detach().float()
    scale = float(cpu.abs().max()) or 1.0
    worst = float((gpu - cpu).abs().max())
    return {"what": name, "max_abs_diff": worst, "scale": scale, "relative": worst / scale, "tolerance": rtol,
            "ok": worst <= rtol * scale}


def correctness(device: str, images, results: dict) -> None:
    import copy

    import torch

    from pipelines.model import Autoencoder, scale_images
    from pipelines.training import batch_loss, training_network

    torch.manual_seed(0)
    model = Autoencoder().eval()
    x = torch.from_numpy(images[:4096].copy())
    with torch.no_grad():
        reconstructions, codes = model(scale_images(x))
        mse = (reconstructions - scale_images(x)).square().flatten(1).mean(1)
    on_device = copy.deepcopy(model).to(device)
    checks = []
    for label, tf32, rtol in (("strict fp32", False, 1e-4), ("default (TF32 convolutions)", None, 5e-3)):
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        if tf32 is not None:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            inputs = scale_images(x.to(device))
            rec_d, codes_d = on_device(inputs)
            mse_d = (rec_d - inputs).square().flatten(1).mean(1)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        checks.append(compare(f"features, {label}", codes, codes_d, rtol))
        checks.append(compare(f"recon_mse, {label}", mse, mse_d, rtol))

    # one training step's loss and gradients from the same weights on the same batch (strict fp32)
    grads, losses = [], []
    for dev in ("cpu", device):
        torch.manual_seed(0)
        network = training_network(Autoencoder(), "autoencoder").to(dev)
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        loss = batch_loss(network, x[:64].to(dev), None, "autoencoder")
        loss.backward()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        losses.append(loss.detach().cpu().reshape(1))
        grads.append(torch.cat([p.grad.detach().float().cpu().flatten() for p in network.parameters()]))
    checks.append(compare("training loss, strict fp32", losses[0], losses[1], 1e-4))
    checks.append(compare("gradients of every weight, strict fp32", grads[0], grads[1], 1e-3))
    results["correctness"] = checks
    for check in checks:
        say(f"  {check['what']}: max |diff| {check['max_abs_diff']:.2e} (scale {check['scale']:.2e}) -> "
            f"{'OK' if check['ok'] else 'FAIL'}")


def ray_features_match(device: str, model_path: Path, table_path: Path, results: dict) -> None:
    """The Ray GPU job's feature table against the CPU's features of the same images."""
    import numpy as np
    import torch

    from pipelines.data import fashion_mnist_arrays
    from pipelines.features import read_features
    from pipelines.model import load_model, scale_images

    table = read_features(table_path)
    model, _ = load_model(model_path)
    train, _ = fashion_mnist_arrays("train")
    test, _ = fashion_mnist_arrays("test")
    half = min(1024, len(table) // 2)
    pick = np.r_[0:half, len(table) - half : len(table)]  # ids are row numbers: train 0.., test 60000..
    ids = table.ids[pick]
    pixels = np.stack([train[i] if i < 60_000 else test[i - 60_000] for i in ids])
    with torch.no_grad():
        inputs = scale_images(torch.from_numpy(pixels))
        rec, codes = model(inputs)
        mse = (rec - inputs).square().flatten(1).mean(1)
    checks = [compare("Ray GPU job's features vs CPU", codes, torch.from_numpy(table.X[pick]), 5e-3),
              compare("Ray GPU job's recon_mse vs CPU", mse, torch.from_numpy(table.recon_mse[pick]), 5e-3)]
    results.setdefault("correctness", []).extend(checks)
    for check in checks:
        say(f"  {check['what']}: max |diff| {check['max_abs_diff']:.2e} -> {'OK' if check['ok'] else 'FAIL'}")


# --- 2. one training epoch -----------------------------------------------------------------------


def plain_epochs(device: str, images, batch: int, resident: bool, epochs: int = 2) -> list[float]:
    """Seconds of each epoch of the plain loop (train_epoch), after a short warm-up."""
    import torch

    from pipelines.config import TrainConfig
    from pipelines.model import ModelSpec
    from pipelines.training import build_optimizer, initial_model, train_epoch, training_network

    config = TrainConfig(batch_size=batch)
    network = training_network(initial_model(ModelSpec(), config), "autoencoder").to(device)
    optimizer, _ = build_optimizer(network, config)
    host = torch.from_numpy(images.copy())
    data = host.to(device) if resident else host
    if not resident and torch.device(device).type == "cuda":
        data = data.pin_memory()
    generator = torch.Generator(device=data.device).manual_seed(0)

    def batches(limit=None):
        order = torch.randperm(len(data), generator=generator, device=data.device)
        for start in range(0, len(data) if limit is None else limit * batch, batch):
            yield {"image": data[order[start : start + batch]].to(device, non_blocking=True)}

    train_epoch(network, batches(limit=20), optimizer, "autoencoder")  # warm-up: kernels, cuDNN, allocator
    sync(device)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        train_epoch(network, batches(), optimizer, "autoencoder")  # ends in one .item(): synchronised
        seconds.append(time.perf_counter() - started)
    return seconds


def ray_train_epochs(device: str, limit: int | None, cache: bool, tag: str) -> dict:
    from pipelines import training
    from pipelines.config import DataConfig, TrainConfig

    start_ray()
    saved = training.SHARD_CACHE_BYTES
    training.SHARD_CACHE_BYTES = saved if cache else 0
    run_dir = SCRATCH / "gpu" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    gpus = 1.0 if device == "cuda" else 0.0
    started = time.perf_counter()
    try:
        result = training.train(DataConfig(limit=limit), TrainConfig(epochs=2, workers=1, gpus_per_worker=gpus), run_dir)
    finally:
        training.SHARD_CACHE_BYTES = saved
    return {"epoch_seconds": [row["epoch_seconds"] for row in result.history],
            "train_loss": [row["train_loss"] for row in result.history], "wall_seconds": time.perf_counter() - started}


# --- 3. extraction -------------------------------------------------------------------------------


def extraction(device: str, limit: int | None, model_path: Path, kind: str) -> dict:
    out = SCRATCH / "gpu" / f"features-{kind}"
    images = ALL_IMAGES if limit is None else 2 * (limit // 2)
    args = [kind, "--model", str(model_path), "--out", str(out), "--images", str(images), "--batch", str(EXTRACT_BATCH)]
    if kind == "plain":
        args += ["--device", device]
    elif device == "cuda":
        args += ["--gpus-per-actor", "1"]
    result = run_child("benchmarks.extraction", args, timeout=600)
    result["out"] = str(out)
    # including start-up: CUDA's start (inside the call), ray.init, model load, reading the images;
    # not the interpreter's start and imports (shown apart as the whole process)
    result["images_per_s_with_startup"] = result["images"] / (result["seconds"] + result.get("ray_init_seconds", 0.0))
    return result


# --- the driver ----------------------------------------------------------------------------------


def section(name: str, results: dict, fn, *args) -> None:
    say(f"{name} ...")
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
        traceback.print_exc()
        results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"
        say(f"{name} FAILED: {type(error).__name__}: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=os.environ.get("DEVICE", "cuda"), choices=["cuda", "cpu"])
    parser.add_argument("--limit", type=int, default=int(os.environ["LIMIT"]) if os.environ.get("LIMIT") else None,
                        help="images per split (a dry run); default: all")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(SCRATCH / "gpu"))
    parser.add_argument("--deadline", type=float, default=float(os.environ.get("DEADLINE", 420)),
                        help="seconds this may take: optional rows are skipped when it is near")
    args = parser.parse_args()
    import torch

    from pipelines.data import fashion_mnist_arrays
    from benchmarks.extraction import bench_model

    device = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "device": device, "limit": args.limit, "torch": torch.__version__,
                     "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {results['gpu']}, device {device}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: check nvidia-smi, or run with DEVICE=cpu for a dry run")
    try:
        import ray
        import ray.data

        results["ray"] = ray.__version__
        ray.data.DataContext.get_current().enable_progress_bars = False  # keep the log readable
    except ImportError:
        results["ray"] = None
        say("ray is not installed: the Ray rows are skipped")

    train_images, _ = fashion_mnist_arrays("train")
    test_images, _ = fashion_mnist_arrays("test")
    if args.limit:
        train_images, test_images = train_images[: args.limit], test_images[: args.limit]
    model_path = bench_model()

    section("correctness", results, correctness, device, test_images, results)

    def training_rows() -> None:
        rows = results.setdefault("training", {})
        for name, resident in (("plain loop, batches from host memory", False), ("plain loop, uint8 data resident on the device", True)):
            seconds = plain_epochs(device, train_images, 64, resident)
            rows[name] = {"epoch_seconds": seconds}
            say(f"  {name}: epochs {', '.join(f'{s:.2f}' for s in seconds)} s")

    section("training, plain", results, training_rows)

    def ray_rows() -> None:
        rows = results.setdefault("training", {})
        variants = [("Ray Train, 1 worker, shards cached on the device (default)", True),
                    ("Ray Train, 1 worker, Ray Data batches streamed (cache off)", False)]
        for name, cache in variants:
            if name != variants[0][0] and elapsed() > args.deadline * 0.6:
                say(f"  skipped (time): {name}")
                continue
            rows[name] = ray_train_epochs(device, args.limit, cache, "cached" if cache else "streamed")
            say(f"  {name}: epochs {', '.join(f'{s:.2f}' for s in rows[name]['epoch_seconds'])} s, "
                f"whole call {rows[name]['wall_seconds']:.1f} s")

    if results["ray"]:
        section("training, Ray Train", results, ray_rows)

    def extraction_rows() -> None:
        rows = results.setdefault("extraction", {})
        kinds = [("plain", "plain loop (torch + ParquetWriter)")]
        if results["ray"]:
            kinds.append(("ray", "Ray Data job, 1 GPU actor, batch 4096, cold ray.init"))
        for kind, name in kinds:
            rows[name] = extraction(device, args.limit, model_path, kind)
            say(f"  {name}: {rows[name]['images_per_s_with_startup']:,.0f} images/s incl. start-up "
                f"(whole process {rows[name]['process_seconds']:.1f} s)")
        if results["ray"]:
            ray_features_match(device, model_path, Path(rows[kinds[-1][1]]["out"]), results)

    section("extraction", results, extraction_rows)

    table = summary_table(results, args.limit)
    text = table.markdown()
    print("\n" + text, flush=True)
    (out / "gpu_table.md").write_text(text)
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2, default=str))
    say(f"done; tables in {out}")
    failed = [c for c in results.get("correctness", []) if not c["ok"]]
    if failed or results.get("errors"):
        raise SystemExit(1)


def summary_table(results: dict, limit: int | None) -> Table:
    n_train = limit or TRAIN_IMAGES
    table = Table(f"GPU ({results.get('gpu') or results['device']}; torch {results['torch']}, ray {results.get('ray')})",
                  ["check / timing", "figure", "target", "met?"])
    for check in results.get("correctness", []):
        table.add(check["what"], f"max abs diff {check['max_abs_diff']:.1e} ({check['relative']:.1e} of scale)",
                  f"<= {check['tolerance']:g} x scale", "yes" if check["ok"] else "**NO**")
    for name, row in results.get("training", {}).items():
        seconds = row["epoch_seconds"]
        warm = min(seconds[1:] or seconds)
        cell = f"epoch 1: {seconds[0]:.2f} s, warm epoch: {warm:.2f} s ({n_train / warm:,.0f} images/s)"
        if "wall_seconds" in row:
            cell += f"; whole call {row['wall_seconds']:.0f} s"
        table.add(f"training epoch, {n_train:,} images, batch 64: {name}", cell, f"<= {EPOCH_TARGET_S:g} s",
                  "yes" if warm <= EPOCH_TARGET_S else "no")
    for name, row in results.get("extraction", {}).items():
        table.add(f"extraction, {row['images']:,} images: {name}",
                  f"{row['images_per_s_with_startup']:,.0f} images/s incl. start-up "
                  f"({row['seconds'] + row.get('ray_init_seconds', 0):.1f} s; ray.init {row.get('ray_init_seconds', 0):.1f} s); "
                  f"whole process with imports {row['process_seconds']:.1f} s",
                  f">= {EXTRACT_TARGET:,} images/s incl. start-up",
                  "yes" if row["images_per_s_with_startup"] >= EXTRACT_TARGET else "no")
    for name, error in results.get("errors", {}).items():
        table.add(f"{name}: FAILED", error.replace("|", "/")[:300], "", "**NO**")
    if limit:
        table.notes.append(f"DRY RUN: --limit {limit} images per split on {results['device']}; not a measurement.")
    table.notes.append("warm epoch: the fastest epoch after the first (the first includes cuDNN/cuBLAS start-up; "
                       "for Ray Train also reading the shard into the cache); the target is judged on it.")
    return table


if __name__ == "__main__":
    main()
