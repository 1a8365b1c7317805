"""Feature extraction: Ray Data maps the encoder over image shards into a Parquet feature table.

Columns of a feature table (plain Arrow types, so pyarrow and pandas read it without Ray):

=============  ==========================================================
``id``          int64, the source's image id (unique)
``label``       int64, null when unknown
``label_name``  string, null when unknown
``path``        string, null for array sources (Fashion-MNIST)
``feature``     fixed_size_list<float32>[code_dim]: the encoder's code
``recon_mse``   float32: the image's mean squared reconstruction error
=============  ==========================================================

The table's metadata (fingerprint of the model, source, code version, class names, ...) is JSON
under the key ``featurelens`` of every file's Arrow schema metadata. ``read_features`` reads a
table back with plain pyarrow and checks it.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from pipelines.config import DataConfig, ExtractConfig
from pipelines.data import DataError, ImageSource, load_images
from pipelines.model import CODE_DIM, Autoencoder, ModelSpec, fingerprint, load_model, resolve_model_path, scale_images
from pipelines.runtime import cluster_cpus, cluster_gpus, init_ray
from pipelines.storage import atomic_output_dir
from pipelines.training import ResourceError

METADATA_KEY = b"featurelens"
REQUIRED_COLUMNS = ("id", "label", "label_name", "feature", "recon_mse")


def feature_schema(code_dim: int = CODE_DIM, metadata: dict | None = None) -> pa.Schema:
    """The feature table's schema, with ``metadata`` as JSON under ``featurelens``."""
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("label", pa.int64()),
            ("label_name", pa.string()),
            ("path", pa.string()),
            ("feature", pa.list_(pa.float32(), code_dim)),
            ("recon_mse", pa.float32()),
        ]
    )
    return schema if metadata is None else schema.with_metadata({METADATA_KEY: json.dumps(metadata)})


def feature_table(rows: pa.Table, codes: np.ndarray, recon_mse: np.ndarray) -> pa.Table:
    """The image rows' id, label, label_name and path beside their codes (n, code_dim) and errors.

    A missing nullable column is written as nulls: Ray 2.58's Parquet reader drops a column named
    ``path`` from image shards (ray-project/ray#63757)."""
    columns = {"id": rows["id"]}
    for name in ("label", "label_name", "path"):
        columns[name] = rows[name] if name in rows.column_names else pa.nulls(rows.num_rows)
    columns["label"] = null_nan_labels(columns["label"])
    codes = np.ascontiguousarray(codes, dtype=np.float32)
    columns["feature"] = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), codes.shape[1])
    columns["recon_mse"] = pa.array(recon_mse, pa.float32())
    # cast: a column Ray rebuilt from numpy may come back as null-typed (all None)
    return pa.table(columns).cast(feature_schema(codes.shape[1]))


def null_nan_labels(labels: pa.ChunkedArray) -> pa.ChunkedArray:
    """Unknown labels that went through numpy come back as float NaN: make them null again."""
    if not pa.types.is_floating(labels.type):
        return labels
    return pc.if_else(pc.is_nan(labels), None, labels).cast(pa.int64())


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
        inputs = scale_images(torch.from_numpy(images).to(self.device))
        reconstructions, codes = self.model(inputs)
        recon_mse = (reconstructions - inputs).square().flatten(1).mean(1)
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

    CPU actors share the cores out in torch threads (cores / actors), as training workers do:
    reading and writing need the spare core only in bursts, and a core left to them idles most
    of the time (one actor with one thread on 2 cores ran at 0.60x the plain loop; BENCHMARKS.md)."""
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
    actors = config.actors or max(1, int(spare))
    return ActorPlan(actors=actors, cpus=spare / actors, gpus=0.0, threads=max(1, round(cluster_cpus / actors)))


def encode(source: ImageSource, model: Autoencoder, config: ExtractConfig) -> ray.data.Dataset:
    """The source mapped to feature-table rows by a pool of encoder actors (lazy: nothing runs yet)."""
    plan = plan_actors(config, cluster_cpus(), cluster_gpus())
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


def extract_features(data: DataConfig, config: ExtractConfig, out: str | Path) -> Path:
    """Write the feature table of ``config.checkpoint``'s encoder over ``data``'s ``config.split``.

    Streaming: Ray Data reads, encodes and writes in blocks; the driver only reads the ids back to
    check them. Atomic: the table appears at ``out`` complete, or not at all."""
    if config.checkpoint is None:
        raise ValueError("--checkpoint is required: a training run directory or its model.pt")
    out = Path(out)
    with atomic_output_dir(out, overwrite=config.overwrite) as tmp:
        model, _ = load_model(config.checkpoint)
        init_ray()
        source = load_images(data, config.split)
        check_source_matches(source, model.spec)
        metadata = table_metadata(model, source, config.checkpoint)
        started = time.perf_counter()
        encode(source, model, config).write_parquet(str(tmp), schema=feature_schema(model.spec.code_dim, metadata))
        seconds = time.perf_counter() - started
        check_written_ids(tmp, source.num_images)
    print(
        f"[extract] {source.num_images:,} images of {source.name}/{source.split} -> {out} in {seconds:.1f} s "
        f"({source.num_images / seconds:,.0f} images/s)",
        flush=True,
    )
    return out


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
        "skipped": [{"path": path, "error": error} for path, error in source.skipped],
    }


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


def check_unique_ids(ids: np.ndarray, where: Path) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise DataError(f"{where}: {len(ids) - len(unique)} duplicate id(s), e.g. {unique[counts > 1][:5].tolist()}")


def parquet_files(path: Path) -> list[Path]:
    """A table folder's Parquet files in name order, or the one file ``path`` names."""
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise DataError(f"{path}: no feature table here (no .parquet files)")
    return files


# --- the reader (plain pyarrow) --------------------------------------------------------------


@dataclass
class FeatureTable:
    """A feature table in memory, rows sorted by id."""

    ids: np.ndarray  # int64 [n]
    X: np.ndarray  # float32 [n, code_dim]
    labels: np.ndarray  # int64 [n], -1 where unknown
    label_names: np.ndarray  # object [n]: str, or None where unknown
    class_names: list[str]  # by label index
    recon_mse: np.ndarray  # float32 [n]
    metadata: dict

    def __len__(self) -> int:
        return len(self.ids)


def read_features(path: str | Path, expected_fingerprint: str | None = None) -> FeatureTable:
    """Read and check a feature table (a folder of Parquet files, or one file) with plain pyarrow.

    DataError names the file and what is wrong: a missing column, a feature width other than the
    metadata's code_dim (512 without metadata), rows with NaN or inf, or another model's fingerprint."""
    path = Path(path)
    files = parquet_files(path)
    metadata = table_metadata_of(files)
    if expected_fingerprint is not None and metadata.get("fingerprint") != expected_fingerprint:
        raise DataError(
            f"{path}: features of the model with fingerprint {metadata.get('fingerprint')}, "
            f"expected {expected_fingerprint}"
        )
    width = int(metadata.get("code_dim", CODE_DIM))
    table = pa.concat_tables([read_feature_file(file, width) for file in files])
    order = np.argsort(table["id"].to_numpy(), kind="stable")
    table = table.take(order)
    ids = writable_array(table["id"])
    check_unique_ids(ids, path)
    X = writable_array(table["feature"].combine_chunks().flatten()).reshape(len(ids), width)
    recon_mse = writable_array(table["recon_mse"])
    check_finite(ids, X, recon_mse, path)
    labels = writable_array(table["label"].fill_null(-1))
    label_names = np.array(table["label_name"].to_pylist(), dtype=object)
    return FeatureTable(
        ids=ids,
        X=X,
        labels=labels,
        label_names=label_names,
        class_names=metadata.get("class_names") or class_names_of(labels, label_names),
        recon_mse=recon_mse,
        metadata=metadata,
    )


def table_metadata_of(files: list[Path]) -> dict:
    """The metadata every file of the table carries ({} for a table written elsewhere)."""
    found = [(pq.read_schema(file).metadata or {}).get(METADATA_KEY) for file in files]
    for file, raw in zip(files[1:], found[1:]):
        if raw != found[0]:
            raise DataError(f"{file}: metadata differs from {files[0]}'s (files of two extractions in one table)")
    return json.loads(found[0]) if found[0] else {}


def read_feature_file(file: Path, width: int) -> pa.Table:
    """One file's required columns, after checking that they are there and the feature width."""
    schema = pq.read_schema(file)
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise DataError(f"{file}: missing column(s) {', '.join(missing)} of the feature table")
    feature_type = schema.field("feature").type
    if not pa.types.is_fixed_size_list(feature_type) or feature_type.list_size != width:
        raise DataError(f"{file}: column 'feature' must be fixed_size_list<float32>[{width}], found {feature_type}")
    table = pq.read_table(file, columns=list(REQUIRED_COLUMNS))
    if table["feature"].null_count:
        raise DataError(f"{file}: column 'feature' has {table['feature'].null_count} null row(s)")
    required = feature_schema(width)
    return table.cast(pa.schema([required.field(name) for name in REQUIRED_COLUMNS]))


def writable_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numpy copy that callers may change in place (Arrow's own buffers are read-only)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False, writable=True)


def check_finite(ids: np.ndarray, X: np.ndarray, recon_mse: np.ndarray, where: Path) -> None:
    bad = ~(np.isfinite(X).all(axis=1) & np.isfinite(recon_mse))
    if bad.any():
        raise DataError(
            f"{where}: {int(bad.sum())} row(s) with NaN or inf features or recon_mse, ids {ids[bad][:5].tolist()} ..."
        )


def class_names_of(labels: np.ndarray, label_names: np.ndarray) -> list[str]:
    """Class names by label index from the rows' label/label_name pairs (a label no row names
    gets its number as name)."""
    names = {int(label): name for label, name in zip(labels, label_names) if label >= 0 and name is not None}
    return [names.get(label, str(label)) for label in range(max(names, default=-1) + 1)]
