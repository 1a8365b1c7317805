"""Data sources on the real data: the official Fashion-MNIST files and the ORL faces."""

import gzip
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs import shards as shards_job
from pipelines.config import DataConfig
from pipelines.data import (
    FASHION_MNIST_CLASSES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataError,
    decode_image,
    fashion_mnist_arrays,
    load_images,
    read_idx,
)


def test_idx_reader_on_the_official_files(fashion_mnist_dir):
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = fashion_mnist_arrays(split, str(fashion_mnist_dir))
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert np.bincount(labels).tolist() == [n // 10] * 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_truncated_idx_file_is_refused_by_name(fashion_mnist_dir, tmp_path):
    raw = gzip.open(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz").read()
    broken = tmp_path / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=rf"{broken}.*truncated"):
        read_idx(broken, IDX_IMAGES_MAGIC)


def test_labels_file_given_as_images_is_refused(fashion_mnist_dir, tmp_path):
    for name in ("t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(fashion_mnist_dir / name, tmp_path / name)
    shutil.copy(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="expected an IDX images file, found labels"):
        fashion_mnist_arrays("test", str(tmp_path))
    with pytest.raises(DataError, match="expected an IDX labels file"):
        read_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", IDX_LABELS_MAGIC)


def test_decoding_an_image_opens_its_file_once(faces_dir, tmp_path, monkeypatch):
    """Given a file's name, PIL opens a raw PGM (the ORL faces) twice, the second time to memory-
    map it; the inotify count of the stage tests cannot always tell (identical events in a row
    are merged), so the decode's own opens are counted here."""
    import builtins

    from PIL import Image

    png = tmp_path / "face.png"
    Image.open(faces_dir / "s1" / "1.pgm").save(png)
    opened, real_open = [], builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *args, **kwargs: opened.append(str(file)) or real_open(file, *args, **kwargs))
    for path in (str(faces_dir / "s1" / "1.pgm"), str(png)):
        assert decode_image(path, 28, 28, "L").shape == (28, 28)
    assert opened == [str(faces_dir / "s1" / "1.pgm"), str(png)]


def test_fashion_mnist_source_schema_and_ids(ray_session):
    source = load_images(DataConfig(limit=50), "all")
    batch = source.dataset.take_batch(200)
    assert source.num_images == 100 and len(batch["id"]) == 100
    assert batch["image"].shape == (100, 28, 28) and batch["image"].dtype == np.uint8
    assert len(set(batch["id"].tolist())) == 100 and batch["id"].min() == 0 and batch["id"].max() == 60_049
    assert set(batch["label_name"]) <= set(FASHION_MNIST_CLASSES)


def test_orl_faces_folder(ray_session, faces_dir):
    source = load_images(DataConfig(dataset="images", data_dir=str(faces_dir), image_size="64x64"), "all")
    batch = source.dataset.take_batch(1000)
    assert source.num_images == 400 and len(batch["id"]) == 400
    assert batch["image"].shape == (400, 64, 64)
    assert len(set(batch["label"].tolist())) == 40 and source.class_names[:3] == ["s1", "s2", "s3"]
    assert all(path.startswith(str(faces_dir)) for path in batch["path"])


def test_orl_native_size_and_rgb(ray_session, faces_dir):
    source = load_images(DataConfig(dataset="images", data_dir=str(faces_dir), color="RGB", limit=5), "all")
    assert (source.height, source.width, source.channels) == (112, 92, 3)
    assert source.dataset.take_batch(5)["image"].shape == (5, 112, 92, 3)


def test_train_and_test_splits_are_disjoint_and_stable(ray_session, faces_dir):
    config = DataConfig(dataset="images", data_dir=str(faces_dir), image_size="28x28")
    train = set(load_images(config, "train").dataset.take_batch(1000)["path"])
    test = set(load_images(config, "test").dataset.take_batch(1000)["path"])
    again = set(load_images(config, "test").dataset.take_batch(1000)["path"])
    assert not train & test and len(train) + len(test) == 400 and test == again
    assert 40 <= len(test) <= 120  # about test_fraction = 0.2


def test_parquet_image_shards_round_trip(ray_session, faces_dir, tmp_path, capsys):
    folder = load_images(DataConfig(dataset="images", data_dir=str(faces_dir), image_size="32x32"), "all")
    argv = ["--dataset", "images", "--data-dir", str(faces_dir), "--image-size", "32x32", "--out", str(tmp_path / "shards")]
    shards_job.main(argv)
    assert pq.read_table(tmp_path / "shards").num_rows == 400  # plain pyarrow reads them
    with pytest.raises(SystemExit) as refused:  # an existing folder is refused, not added to
        shards_job.main(argv)
    assert refused.value.code == 2 and "already exists" in capsys.readouterr().err
    shards = load_images(DataConfig(dataset="parquet", data_dir=str(tmp_path / "shards")), "all")
    assert shards.num_images == 400 and shards.class_names == folder.class_names
    a = folder.dataset.take_batch(1000)
    b = shards.dataset.take_batch(1000)
    order_a, order_b = np.argsort(a["id"]), np.argsort(b["id"])
    np.testing.assert_array_equal(a["image"][order_a], b["image"][order_b])
    np.testing.assert_array_equal(a["label"][order_a], b["label"][order_b])
