"""The feature table: its schema, and its reader in plain pyarrow (no Ray, no torch).

Columns (plain Arrow types, so pyarrow and pandas read a table without featurelens):

=============  ==========================================================
``id``          int64, the image's id (unique)
``feature``     fixed_size_list<float32>[d], any width d: the embedding
``label``       int64, null when unknown (optional)
``label_name``  string, null when unknown (optional)
``path``        string, null for array sources such as Fashion-MNIST (optional)
``recon_mse``   float32: the image's mean squared reconstruction error (optional)
=============  ==========================================================

featurelens's extractor writes every column, and the table's metadata (the model's fingerprint,
the source, the code version, class names, ...) as JSON under the key ``featurelens`` of every
file's Arrow schema metadata. A table of embeddings from elsewhere needs ``id`` and ``feature`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.errors import DataError

METADATA_KEY = b"featurelens"
REQUIRED_COLUMNS = ("id", "feature")
READ_BUFFER_BYTES = 4 << 20
OPTIONAL_COLUMNS = {"label": pa.int64(), "label_name": pa.string(), "path": pa.string(), "recon_mse": pa.float32()}


def feature_schema(code_dim: int, metadata: dict | None = None) -> pa.Schema:
    """The schema featurelens writes, with ``metadata`` as JSON under ``featurelens``."""
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("label_name", pa.string()),
                        ("path", pa.string()), ("feature", pa.list_(pa.float32(), code_dim)),
                        ("recon_mse", pa.float32())])
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


@dataclass
class FeatureTable:
    """A feature table in memory, rows sorted by id."""

    ids: np.ndarray  # int64 [n]
    X: np.ndarray  # float32 [n, d]
    labels: np.ndarray  # int64 [n], -1 where unknown
    label_names: np.ndarray  # object [n]: str, or None where unknown
    paths: np.ndarray  # object [n]: str, or None where unknown
    class_names: list[str]  # by label index
    recon_mse: np.ndarray  # float32 [n], NaN where unknown
    metadata: dict

    def __len__(self) -> int:
        return len(self.ids)


def read_features(path: str | Path, expected_fingerprint: str | None = None) -> FeatureTable:
    """Read and check a feature table (a folder of Parquet files, or one file) with plain pyarrow.

    DataError names the file and what is wrong: a missing ``id`` or ``feature`` column, a feature
    column that is not a fixed-size list of floats, widths that differ between files or from the
    metadata's code_dim, rows with NaN or inf, duplicate ids, or another model's fingerprint."""
    return scan_features(path, expected_fingerprint=expected_fingerprint).sample


@dataclass
class TableScan:
    """One streaming read of a feature table: the rows of a sample in memory, and of every row
    only its id and label (for the count and the fingerprint)."""

    sample: FeatureTable  # sorted by id
    ids: np.ndarray  # int64 [n], every row's, sorted
    labels: np.ndarray  # int64 [n] in the order of ids, -1 where unknown


def scan_features(path: str | Path, share: float = 1.0, expected_fingerprint: str | None = None,
                  batch_rows: int = 65_536) -> TableScan:
    """Read a feature table batch by batch, checking every row as :func:`read_features` does,
    and keep the rows whose id's sample key (``pipelines.assignment``) is below ``share``: all of
    them with ``share`` 1. Memory: the sample, one batch, and 16 bytes per row."""
    from pipelines.assignment import in_sample

    path = Path(path)
    files = parquet_files(path)
    metadata = table_metadata_of(files)
    if expected_fingerprint is not None and metadata.get("fingerprint") != expected_fingerprint:
        raise DataError(f"{path}: features of the model with fingerprint {metadata.get('fingerprint')}, "
                        f"expected {expected_fingerprint}")
    width = table_width(files, metadata)
    kept, ids, labels = [], [], []
    for file in files:
        for batch in feature_batches(file, width, batch_rows):
            batch_ids = batch["id"].to_numpy()
            check_finite(batch_ids, feature_matrix(batch, width), file)
            ids.append(batch_ids)
            labels.append(batch["label"].fill_null(-1).to_numpy())
            kept.append(batch if share >= 1 else batch.filter(pa.array(in_sample(batch_ids, share))))
    ids, labels = np.concatenate(ids), np.concatenate(labels)
    order = np.argsort(ids, kind="stable")
    check_unique_ids(ids[order], path)
    return TableScan(feature_table_in_memory(pa.concat_tables(kept), width, metadata), ids[order], labels[order])


def feature_matrix(table: pa.Table, width: int) -> np.ndarray:
    return writable_array(table["feature"].combine_chunks().flatten()).reshape(table.num_rows, width)


def feature_table_in_memory(table: pa.Table, width: int, metadata: dict) -> FeatureTable:
    table = table.take(np.argsort(table["id"].to_numpy(), kind="stable"))
    labels = writable_array(table["label"].fill_null(-1))
    label_names = np.array(table["label_name"].to_pylist(), dtype=object)
    return FeatureTable(ids=writable_array(table["id"]), X=feature_matrix(table, width), labels=labels,
                        label_names=label_names, paths=np.array(table["path"].to_pylist(), dtype=object),
                        class_names=metadata.get("class_names") or class_names_of(labels, label_names),
                        recon_mse=writable_array(table["recon_mse"].fill_null(np.nan)), metadata=metadata)


@dataclass
class TableSummary:
    """What a feature table is, without its features: read from the files' metadata and the
    label columns only."""

    rows: int
    width: int
    class_names: list[str]
    class_sizes: np.ndarray  # int64 [classes]: rows per class
    metadata: dict


def summarize_features(path: str | Path) -> TableSummary:
    files = parquet_files(Path(path))
    metadata = table_metadata_of(files)
    present = [name for name in ("label", "label_name") if name in pq.read_schema(files[0]).names]
    labels = pa.concat_tables([pq.read_table(file, columns=present) for file in files]) if present else None
    codes = (null_nan_labels(labels["label"]).fill_null(-1).to_numpy() if labels is not None and "label" in present
             else np.full(sum(pq.ParquetFile(file).metadata.num_rows for file in files), -1))
    names = metadata.get("class_names") or class_names_of(
        codes, np.array(labels["label_name"].to_pylist() if "label_name" in present else [None] * len(codes),
                        dtype=object))
    sizes = np.bincount(codes[codes >= 0], minlength=len(names))
    return TableSummary(len(codes), table_width(files, metadata), names, sizes, metadata)


def read_rows(path: str | Path, ids: np.ndarray) -> FeatureTable:
    """The rows of ``ids`` alone (a filter on the id column: memory of those rows only), sorted by id."""
    files = parquet_files(Path(path))
    metadata = table_metadata_of(files)
    width = table_width(files, metadata)
    wanted = pa.array(np.asarray(ids, dtype=np.int64))
    kept = [table.filter(pc.is_in(table["id"], value_set=wanted))
            for file in files for table in feature_batches(file, width, 65_536)]
    return feature_table_in_memory(pa.concat_tables(kept), width, metadata)


def table_metadata_of(files: list[Path]) -> dict:
    """The metadata every file of the table carries ({} for a table written elsewhere)."""
    found = [(pq.read_schema(file).metadata or {}).get(METADATA_KEY) for file in files]
    for file, raw in zip(files[1:], found[1:]):
        if raw != found[0]:
            raise DataError(f"{file}: metadata differs from {files[0]}'s (files of two extractions in one table)")
    return json.loads(found[0]) if found[0] else {}


def table_width(files: list[Path], metadata: dict) -> int:
    """The table's embedding width: its metadata's code_dim, else its first file's feature column."""
    return int(metadata.get("code_dim") or feature_width(files[0]))


def feature_width(file: Path) -> int:
    """The width of the ``feature`` column of ``file``: fixed_size_list<float>[d]."""
    schema = pq.read_schema(file)
    if "feature" not in schema.names:
        raise DataError(f"{file}: missing column feature of the feature table (columns: {', '.join(schema.names)})")
    feature_type = schema.field("feature").type
    if not (pa.types.is_fixed_size_list(feature_type) and pa.types.is_floating(feature_type.value_type)):
        raise DataError(f"{file}: column 'feature' must be a fixed_size_list of float32, found {feature_type}")
    return feature_type.list_size


def feature_batches(file: Path, width: int, batch_rows: int, row_groups: list[int] | None = None):
    """The batches of one file in the featurelens schema (an optional column it lacks as nulls),
    after checking the required columns and the feature width."""
    schema = pq.read_schema(file)
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise DataError(f"{file}: missing column(s) {', '.join(missing)} of the feature table")
    if feature_width(file) != width:
        raise DataError(f"{file}: column 'feature' must be fixed_size_list<float32>[{width}], "
                        f"found {schema.field('feature').type}")
    present = [name for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in schema.names]
    target = feature_schema(width)
    # Unbuffered, pyarrow reads a whole file's column chunks ahead (2.6 GiB for a 1M-row file of
    # 512 floats); a stream buffer reads page by page, so memory stays near one batch.
    reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    for batch in reader.iter_batches(batch_size=batch_rows, columns=present, row_groups=row_groups):
        table = pa.Table.from_batches([batch])
        if table["feature"].null_count:
            raise DataError(f"{file}: column 'feature' has {table['feature'].null_count} null row(s)")
        for name, kind in OPTIONAL_COLUMNS.items():
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows, kind))
        try:
            yield table.select(target.names).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(f"{file}: columns do not fit the feature table's types ({error})") from None


def writable_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numpy copy that callers may change in place (Arrow's own buffers are read-only)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy(zero_copy_only=False, writable=True)


def check_finite(ids: np.ndarray, X: np.ndarray, where: Path) -> None:
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} row(s) with NaN or inf features, ids {ids[bad][:5].tolist()} ...")


def class_names_of(labels: np.ndarray, label_names: np.ndarray) -> list[str]:
    """Class names by label index from the rows' label/label_name pairs (a label no row names
    gets its number as name)."""
    names = {int(label): name for label, name in zip(labels, label_names) if label >= 0 and name is not None}
    return [names.get(label, str(label)) for label in range(max(names, default=-1) + 1)]
