"""The extract stage: Ray Data maps a trained encoder over the images into a Parquet feature table.

The table's columns and metadata are ``pipelines.feature_table``'s; this module runs the encoder
as a pool of Ray Data actors and writes the table atomically.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from pipelines.config import DataConfig, ExtractConfig
from pipelines.data import ImageSource, failing_on_bad_images, load_images
from pipelines.errors import DataError, ResourceError
from pipelines.feature_table import METADATA_KEY, check_unique_ids, feature_schema, feature_table, parquet_files
from pipelines.model import Autoencoder, ModelSpec, encode_batch, fingerprint, load_model, resolve_model_path
from pipelines.progress import watch_rows
from pipelines.runtime import bundles, fit_or_grow, init_ray, release_resources
from pipelines.storage import atomic_output


# --- the encoder as a Ray Data actor ---------------------------------------------------------


def image_array(column: pa.ChunkedArray, ids: pa.ChunkedArray, spec: ModelSpec) -> np.ndarray:
    """The batch's images as a uint8 array (n, H, W[, C]), checked against the model's input.

    Images of one size arrive as Ray's or Arrow's fixed-shape tensor; images of several sizes
    (Parquet shards of different sizes) as Ray's variable-shaped tensor, an object array."""
    array = column.combine_chunks()
    if hasattr(array, "to_numpy_ndarray"):
        images = array.to_numpy_ndarray()
        shapes = [images.shape[1:]] * len(images)
    else:
        images = array.to_numpy(zero_copy_only=False)
        shapes = [image.shape for image in images]
    expected = (spec.height, spec.width) if spec.channels == 1 else (spec.height, spec.width, spec.channels)
    wrong = np.flatnonzero([shape != expected for shape in shapes])
    if len(wrong):
        raise DataError(
            f"images of {shape_text(shapes[wrong[0]])} (ids {ids.take(wrong[:5]).to_pylist()} ...) "
            f"in a source of {shape_text(expected)} images, the model's input"
        )
    return np.stack(images)  # also a copy: torch wants a writable array, Arrow's are read-only


def shape_text(shape: tuple[int, ...]) -> str:
    """(H, W) or (H, W, C) -> 'HxWxC'."""
    return "x".join(str(side) for side in (*shape, 1)[:3])


class EncodeImages:
    """Ray Data callable class: image-schema batches -> feature-table batches.

    Each actor builds the model once, from the state dict in the object store (so that actors on
    other nodes need no shared file system), and runs encoder and decoder on every batch."""

    def __init__(self, spec: ModelSpec, state: ray.ObjectRef, threads: int, device: str) -> None:
        torch.set_num_threads(threads)
        self.model = Autoencoder(spec)
        self.model.load_state_dict(ray.get(state))
        self.model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        images = image_array(batch["image"], batch["id"], self.model.spec)
        codes, recon_mse = encode_batch(self.model, torch.from_numpy(images).to(self.device))
        return feature_table(batch, codes.cpu().numpy(), recon_mse.cpu().numpy())


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus: float  # reserved by each actor
    gpus: float  # per actor
    threads: int  # torch threads of each actor

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def plan_actors(config: ExtractConfig, cluster_cpus: float, cluster_gpus: float) -> ActorPlan:
    """Encoder actors that reserve all but one CPU (or half the cluster's), leaving it to Ray
    Data's reading, decoding and writing, which would otherwise wait forever for a CPU.

    CPU actors: one per core, each with one torch thread, the reserved CPUs shared among them:
    reading and writing need the spare core only in bursts, and a core left to them idles most
    of the time (one actor with one thread on 2 cores ran at 0.60x the plain loop); two
    single-threaded forward passes side by side beat one on two threads (BENCHMARKS.md)."""
    spare = max(cluster_cpus - 1.0, cluster_cpus / 2)
    gpus = config.gpus_per_actor
    if gpus > 0:
        actors = config.actors or max(1, int(cluster_gpus // gpus))
        if actors * gpus > cluster_gpus:
            raise ResourceError(
                f"{actors} actor(s) x --gpus-per-actor {gpus:g} needs {actors * gpus:g} GPUs; "
                f"the cluster has {cluster_gpus:g}"
            )
        cpus = min(1.0, spare / actors)  # the GPU does the work; a CPU feeds it
        return ActorPlan(actors=actors, cpus=cpus, gpus=gpus, threads=1)
    actors = config.actors or max(1, int(cluster_cpus))
    return ActorPlan(actors=actors, cpus=spare / actors, gpus=0.0, threads=max(1, round(cluster_cpus / actors)))


def encode(source: ImageSource, model: Autoencoder, config: ExtractConfig) -> ray.data.Dataset:
    """The source mapped to feature-table rows by a pool of encoder actors (lazy: nothing runs yet)."""
    # A cluster too small now may grow: its autoscaler is asked for the actors' GPUs.
    plan = fit_or_grow(lambda cluster_cpus, cluster_gpus: plan_actors(config, cluster_cpus, cluster_gpus),
                       bundles(config.actors or 1, 1.0, config.gpus_per_actor), config.resource_timeout)
    return source.dataset.map_batches(
        EncodeImages,
        batch_format="pyarrow",
        batch_size=config.batch_size,
        fn_constructor_kwargs=dict(
            spec=model.spec, state=ray.put(model.state_dict()), threads=plan.threads, device=plan.device
        ),
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus,
        num_gpus=plan.gpus,
    )


# --- the driver ------------------------------------------------------------------------------


def extract_features(data: DataConfig, config: ExtractConfig, out: str | Path) -> int:
    """Write the feature table of ``config.checkpoint``'s encoder over ``data``'s ``config.split``.

    Streaming: Ray Data reads, encodes and writes in blocks; the driver only reads the ids back to
    check them. Atomic: the table appears at ``out`` complete, or not at all (an unreadable image
    in error mode fails the write, which leaves it in its temporary folder). Returns its rows."""
    if config.checkpoint is None:
        raise ValueError("--checkpoint is required: a training run directory or its model.pt")
    out = Path(out)
    with atomic_output(out, folder=True, overwrite=config.overwrite) as tmp:
        model, _ = load_model(config.checkpoint)
        init_ray()
        source = load_images(data, config.split)
        check_source_matches(source, model.spec)
        metadata = table_metadata(model, source, config.checkpoint)
        started = time.perf_counter()
        with watch_rows(tmp, source.num_images, f"[extract] {source.name}/{source.split}"), failing_on_bad_images(source):
            encode(source, model, config).write_parquet(str(tmp), schema=feature_schema(model.spec.code_dim, metadata),
                                                        min_rows_per_file=config.rows_per_file)
        release_resources()  # the autoscaler may take the nodes it added away again (after a failure: at exit)
        seconds = time.perf_counter() - started
        rows = record_skipped(tmp, metadata, source.skipped)
        check_written_ids(tmp, rows)
    print(
        f"[extract] {rows:,} images of {source.name}/{source.split} -> {out} in {seconds:.1f} s "
        f"({rows / seconds:,.0f} images/s)",
        flush=True,
    )
    return rows


def check_source_matches(source: ImageSource, spec: ModelSpec) -> None:
    """Images of another size or color than the model was trained on are refused before any encoding."""
    found = (source.height, source.width, source.channels)
    if found != (spec.height, spec.width, spec.channels):
        mode = "L" if spec.channels == 1 else "RGB"
        raise ValueError(
            f"the images of {source.name} are {source.image_size}x{source.channels} "
            f"(height x width x channels); the model takes {spec.height}x{spec.width}x{spec.channels}: "
            f"pass --image-size {spec.height}x{spec.width} --color {mode}"
        )


def table_metadata(model: Autoencoder, source: ImageSource, checkpoint: str) -> dict:
    """What a feature table records about where it came from (all known before encoding starts)."""
    return {
        "fingerprint": fingerprint(model),
        "checkpoint": str(resolve_model_path(checkpoint).resolve()),
        "dataset": source.name,
        "split": source.split,
        "image_size": source.image_size,
        "color": "L" if source.channels == 1 else "RGB",
        "code_dim": model.spec.code_dim,
        **code_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_rows": source.num_images,
        "class_names": source.class_names,
        "skipped": [],  # known once the images are decoded: record_skipped
    }


def record_skipped(folder: Path, metadata: dict, skipped: list[tuple[str, str]]) -> int:
    """The table's rows; with images left out (skip mode), their list and the row count go into
    every file's metadata. Known only once the one decode has run, so the files are rewritten
    (the features read and written back, no image decoded again)."""
    if not skipped:
        return metadata["num_rows"]
    metadata = {**metadata, "num_rows": metadata["num_rows"] - len(skipped),
                "skipped": [{"path": path, "error": error} for path, error in skipped]}
    for file in parquet_files(folder):
        table = pq.read_table(file)
        recorded = table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(metadata)})
        pq.write_table(recorded, file.with_suffix(".rewrite"))
        file.with_suffix(".rewrite").replace(file)
    return metadata["num_rows"]


def code_version() -> dict[str, str]:
    """The installed package's version and the git commit of this source tree, else 'unknown'."""
    try:
        version = importlib.metadata.version("featurelens")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"code_version": version, "git_commit": commit or "unknown"}


def check_written_ids(folder: Path, expected_rows: int) -> None:
    """One row per input image: the count and the uniqueness of the ids written (ids only are read)."""
    ids = pq.read_table(parquet_files(folder), columns=["id"])["id"].to_numpy()
    if len(ids) != expected_rows:
        raise DataError(f"{folder}: {len(ids)} rows written for {expected_rows} input images")
    check_unique_ids(ids, folder)


# --- the reader (plain pyarrow) --------------------------------------------------------------


