"""Feature extraction (Ray Data actors -> Parquet) and the plain-pyarrow reader.

The extraction tests share ``tiny_features`` (conftest): the encoder of ``tiny_run`` over the
first 1,000 Fashion-MNIST test images, extracted once per session."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from pipelines.config import DataConfig, ExtractConfig
from pipelines.data import FASHION_MNIST_CLASSES, DataError, fashion_mnist_arrays, to_shard_table
from pipelines.extract import ActorPlan, extract_features, plan_actors
from pipelines.feature_table import METADATA_KEY, feature_schema, feature_table, read_features
from pipelines.model import Autoencoder, ModelSpec, fingerprint, load_model, save_model, scale_images
from pipelines.errors import OutputExistsError

REPO = Path(__file__).resolve().parents[1]
TINY_ROWS = 1000
FIRST_TEST_ID = 60_000  # Fashion-MNIST test ids follow the 60,000 training ids


# --- extraction ------------------------------------------------------------------------------


def test_one_row_per_image_equal_to_the_in_process_encoder(tiny_features, tiny_run):
    model, _ = load_model(tiny_run)
    table = read_features(tiny_features, expected_fingerprint=fingerprint(model))
    images, labels = fashion_mnist_arrays("test")
    with torch.no_grad():
        inputs = scale_images(torch.from_numpy(images[:TINY_ROWS].copy()))
        codes = model.encoder(inputs)
        recon_mse = (model.decoder(codes) - inputs).square().mean((1, 2, 3))

    np.testing.assert_array_equal(table.ids, FIRST_TEST_ID + np.arange(TINY_ROWS))
    assert np.abs(table.X - codes.numpy()).max() <= 1e-5
    np.testing.assert_allclose(table.recon_mse, recon_mse.numpy(), rtol=1e-4)
    np.testing.assert_array_equal(table.labels, labels[:TINY_ROWS])
    assert table.class_names == list(FASHION_MNIST_CLASSES)
    assert table.label_names[0] == FASHION_MNIST_CLASSES[labels[0]]


def test_metadata_names_model_source_and_code(tiny_features, tiny_run):
    metadata = read_features(tiny_features).metadata
    assert metadata["fingerprint"] == fingerprint(load_model(tiny_run)[0])
    assert (metadata["dataset"], metadata["split"], metadata["image_size"], metadata["color"]) == (
        "fashion-mnist", "test", "28x28", "L",
    )  # fmt: skip
    assert metadata["num_rows"] == TINY_ROWS and metadata["skipped"] == []
    assert metadata["class_names"] == list(FASHION_MNIST_CLASSES)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    assert metadata["git_commit"] == head.stdout.strip()  # the checkout that wrote the table
    assert metadata["code_version"] == importlib.metadata.version("featurelens")
    assert metadata["created_at"].endswith("+00:00")


def test_table_is_plain_arrow_for_pyarrow_and_pandas_without_ray(tiny_features):
    """Read in a fresh interpreter that never imports Ray: the table needs no Ray extension type."""
    script = f"""
import sys, pandas, pyarrow as pa, pyarrow.parquet as pq
expected = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("label_name", pa.string()),
                      ("path", pa.string()), ("feature", pa.list_(pa.float32(), 512)), ("recon_mse", pa.float32())])
table = pq.read_table({str(tiny_features)!r})
frame = pandas.read_parquet({str(tiny_features)!r})
assert table.schema.remove_metadata().equals(expected), table.schema
assert table.num_rows == len(frame) == {TINY_ROWS} and len(frame["feature"].iloc[0]) == 512
assert "ray" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def test_existing_table_refused_unless_overwrite(tiny_features, tiny_run, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(tiny_features, out)
    with pytest.raises(OutputExistsError):
        extract_features(DataConfig(limit=100), ExtractConfig(checkpoint=str(tiny_run)), out)

    extract_features(DataConfig(limit=100), ExtractConfig(checkpoint=str(tiny_run), overwrite=True), out)
    assert pq.read_table(out).num_rows == 100  # no file of the old table is left
    assert len(np.unique(read_features(out).ids)) == 100


def test_model_table_mismatch_refused_and_old_table_kept(tiny_features, tiny_run, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(tiny_features, out)
    with pytest.raises(ValueError, match=r"are 32x32x1 .* the model takes 28x28x1"):
        extract_features(
            DataConfig(limit=10, image_size="32x32"), ExtractConfig(checkpoint=str(tiny_run), overwrite=True), out
        )
    assert len(read_features(out)) == TINY_ROWS
    assert [path.name for path in tmp_path.iterdir()] == ["features"]  # no temporary folder left


def test_failure_half_way_leaves_no_table(tiny_run, ray_session, tmp_path):
    """A shard of other-sized images, behind a good one, makes the encoder actor raise mid-run."""
    shards = tmp_path / "shards"
    shards.mkdir()
    write_image_shard(shards / "a.parquet", first_id=0, size=28)
    write_image_shard(shards / "b.parquet", first_id=64, size=30)
    out = tmp_path / "features"
    with pytest.raises(Exception, match=r"images of 30x30x1 \(ids \[\d+") as failure:
        extract_features(
            DataConfig(dataset="parquet", data_dir=str(shards)),
            ExtractConfig(checkpoint=str(tiny_run), split="all", batch_size=32),
            out,
        )
    # Ray Data may split shard b into blocks, so the first id named is any of b's (64..127).
    first_named = int(re.search(r"30x30x1 \(ids \[(\d+)", str(failure.value)).group(1))
    assert 64 <= first_named < 128
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shards"]


def write_image_shard(path: Path, first_id: int, size: int, rows: int = 64) -> None:
    images = np.random.default_rng(first_id).integers(0, 256, (rows, size, size), dtype=np.uint8)
    batch = {
        "id": np.arange(first_id, first_id + rows),
        "image": images,
        "label": np.zeros(rows, np.int64),
        "label_name": np.array(["a"] * rows, dtype=object),
        "path": np.array([None] * rows, dtype=object),
    }
    pq.write_table(to_shard_table(batch), path)


def test_image_folder_of_faces_each_file_decoded_once(faces_dir, ray_session, tmp_path, file_opens):
    faces = shutil.copytree(faces_dir, tmp_path / "faces")
    model_file = tmp_path / "model.pt"
    save_model(model_file, Autoencoder(ModelSpec(112, 92, 1, 40)))
    with file_opens(faces) as opens:
        rows = extract_features(
            DataConfig(dataset="images", data_dir=str(faces)),
            ExtractConfig(checkpoint=str(model_file), split="all"),
            tmp_path / "features",
        )
    table = read_features(tmp_path / "features")
    # One open per file by the decode, and one more of the first file, whose header gives the size.
    faces_files = {str(path.relative_to(faces)) for path in faces.glob("s*/*.pgm")}
    assert set(opens) == faces_files and len(faces_files) == 400
    assert sorted(opens.values())[-2:] == [1, 2] and opens["s1/1.pgm"] == 2
    assert rows == 400
    assert len(table) == 400 and len(np.unique(table.ids)) == 400
    assert len(np.unique(table.labels)) == 40
    assert table.class_names == [f"s{i}" for i in range(1, 41)]
    assert table.metadata["image_size"] == "112x92"


def test_feature_rows_keep_unknown_labels_null_after_numpy_and_ray():
    """Unknown labels come back from a numpy batch as NaN, an all-None column as null-typed, and
    Ray 2.58's Parquet reader drops ``path``: the rows still get the feature table's schema."""
    rows = pa.table({"id": [0, 1], "label": [float("nan"), 2.0], "label_name": pa.nulls(2)})
    table = feature_table(rows, np.zeros((2, 512), np.float32), np.zeros(2, np.float32))
    assert table.schema.equals(feature_schema(512))
    assert table["label"].to_pylist() == [None, 2] and table["path"].to_pylist() == [None, None]


# --- the reader ------------------------------------------------------------------------------


def write_features(path: Path, ids, codes: np.ndarray, metadata: dict | None = None) -> Path:
    """A small feature table file of ``codes`` (n, width), labels id % 3 named c0..c2."""
    ids = np.asarray(ids, np.int64)
    rows = pa.table(
        {
            "id": ids,
            "label": ids % 3,
            "label_name": [f"c{i % 3}" for i in ids],
            "path": pa.nulls(len(ids), pa.string()),
        }
    )
    table = feature_table(rows, codes, np.zeros(len(ids), np.float32))
    if metadata is not None:
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_reader_sorts_rows_by_id_whatever_the_file_order(tmp_path):
    write_features(tmp_path / "t" / "0.parquet", [5, 4, 3], np.full((3, 512), 1, np.float32))
    write_features(tmp_path / "t" / "1.parquet", [2, 1, 0], np.full((3, 512), 2, np.float32))
    table = read_features(tmp_path / "t")
    np.testing.assert_array_equal(table.ids, np.arange(6))
    np.testing.assert_array_equal(table.X[:, 0], [2, 2, 2, 1, 1, 1])
    assert table.class_names == ["c0", "c1", "c2"]  # no metadata: from the label/label_name pairs
    assert table.X.dtype == np.float32 and table.X.flags.writeable


def test_reader_names_a_missing_column(tmp_path):
    file = write_features(tmp_path / "t" / "0.parquet", [0, 1], np.zeros((2, 512), np.float32))
    pq.write_table(pq.read_table(file).drop_columns(["feature"]), file)
    with pytest.raises(DataError, match=r"0\.parquet: missing column feature"):
        read_features(file.parent)


def test_reader_takes_any_embedding_table_with_ids_and_features(tmp_path):
    """A table written by plain pyarrow, 64-wide, with neither labels nor reconstruction errors."""
    codes = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    feature = pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel()), 64)
    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"id": pa.array([4, 3, 2, 1, 0], pa.int64()), "feature": feature}), tmp_path / "t" / "a.parquet")
    table = read_features(tmp_path / "t")
    np.testing.assert_array_equal(table.X, codes[::-1])
    assert (table.labels == -1).all() and table.class_names == [] and np.isnan(table.recon_mse).all()


@pytest.mark.parametrize("second_width, metadata", [(16, None), (512, {"code_dim": 16})])
def test_reader_refuses_another_feature_width(tmp_path, second_width, metadata):
    """Files of one table must agree on the width, and with the width their metadata records."""
    write_features(tmp_path / "t" / "0.parquet", [0, 1], np.zeros((2, 512), np.float32), metadata)
    write_features(tmp_path / "t" / "1.parquet", [2, 3], np.zeros((2, second_width), np.float32), metadata)
    expected = 16 if metadata else 512
    with pytest.raises(DataError, match=rf"column 'feature' must be fixed_size_list<float32>\[{expected}\]"):
        read_features(tmp_path / "t")


def test_reader_counts_rows_with_nan_or_inf(tmp_path):
    codes = np.zeros((10, 512), np.float32)
    codes[3, 7], codes[8, 0] = np.nan, np.inf
    write_features(tmp_path / "t" / "0.parquet", np.arange(10), codes)
    with pytest.raises(DataError, match=r"2 row\(s\) with NaN or inf .* ids \[3, 8\]"):
        read_features(tmp_path / "t")


def test_reader_refuses_another_models_features(tmp_path):
    write_features(tmp_path / "t" / "0.parquet", [0], np.zeros((1, 512), np.float32), {"fingerprint": "a" * 64})
    with pytest.raises(DataError, match=f"fingerprint {'a' * 64}, expected {'b' * 64}"):
        read_features(tmp_path / "t", expected_fingerprint="b" * 64)


# --- the job ---------------------------------------------------------------------------------


def run_extract(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.extract", *arguments], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("case", ["missing checkpoint", "not a state dict", "existing output"])
def test_job_fails_with_one_clear_line(case, tmp_path):
    checkpoint, out = tmp_path / "model.pt", tmp_path / "features"
    if case == "not a state dict":
        torch.save(nn.Linear(2, 2), checkpoint)  # a whole pickled module
    elif case == "existing output":
        save_model(checkpoint, Autoencoder())
        out.mkdir()
    expected = {
        "missing checkpoint": "--checkpoint .*model.pt: no such file",
        "not a state dict": "is not a featurelens checkpoint",
        "existing output": "already exists; pass --overwrite",
    }[case]

    result = run_extract("--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("featurelens extract: error: ") and re.search(expected, result.stderr)


@pytest.mark.parametrize(
    "cpus, gpus, settings, expected",
    [
        (2, 0, {}, ActorPlan(actors=2, cpus=0.5, gpus=0.0, threads=1)),  # one per core, one CPU left reserved
        (2, 0, {"actors": 1}, ActorPlan(actors=1, cpus=1.0, gpus=0.0, threads=2)),  # the cores in torch threads
        (16, 0, {}, ActorPlan(actors=16, cpus=15 / 16, gpus=0.0, threads=1)),
        (16, 1, {"gpus_per_actor": 1}, ActorPlan(actors=1, cpus=1.0, gpus=1.0, threads=1)),
    ],
)
def test_actor_plan_leaves_ray_data_a_cpu_and_uses_every_core(cpus, gpus, settings, expected):
    plan = plan_actors(ExtractConfig(**settings), cluster_cpus=cpus, cluster_gpus=gpus)
    assert plan == expected
    assert plan.actors * plan.cpus <= cpus - 1  # never the whole cluster: Ray Data would wait forever
