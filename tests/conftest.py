"""Shared fixtures: one local Ray instance per test session, and the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACES_DEFAULT = REPO.parent / "shared" / "data" / "faces" / "att_faces"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray on loopback, shared by every test that needs one (a start costs seconds)."""
    import ray

    from pipelines.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The AT&T/ORL faces; a missing copy fails the tests that need it (never skips them)."""
    path = Path(os.environ.get("FEATURELENS_FACES_DIR", FACES_DEFAULT))
    assert (path / "s1").is_dir(), (
        f"the ORL faces are missing at {path}: set FEATURELENS_FACES_DIR or place shared/ beside the repo"
    )
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The official Fashion-MNIST files (Debian package dataset-fashion-mnist, installed by .ci/run)."""
    from pipelines.data import find_fashion_mnist

    return find_fashion_mnist()


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory) -> Path:
    """An autoencoder trained by Ray Train (2 workers, 2 epochs) on 1,024 real Fashion-MNIST
    images: the one training run that the feature, stability and report tests share."""
    from pipelines.config import DataConfig, TrainConfig
    from pipelines.train import train

    run_dir = tmp_path_factory.mktemp("tiny") / "train"
    train(DataConfig(limit=1024), TrainConfig(epochs=2, workers=2, batch_size=64), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def reference_training(ray_session, faces_dir, tmp_path_factory):
    """(data, config, result) of one uninterrupted Ray Train run on an image folder: 3 epochs of
    1 worker, seed fixed. The resume and fault tests end their own runs of the same config with
    these very weights. An image folder reaches the worker as many small blocks decoded by
    parallel Ray Data tasks, which finish in another order on each run; at 56x46 an epoch lasts
    long enough for a worker to be killed inside one."""
    from pipelines.config import DataConfig, TrainConfig
    from pipelines.train import train

    data = DataConfig(dataset="images", data_dir=str(faces_dir), image_size="56x46")
    config = TrainConfig(epochs=3, workers=1, batch_size=32, seed=3, max_failures=1)
    return data, config, train(data, config, tmp_path_factory.mktemp("reference") / "train")


@pytest.fixture(scope="session")
def tiny_features(tiny_run, tmp_path_factory) -> Path:
    """The feature table (a folder of Parquet files) of ``tiny_run``'s encoder over the first
    1,000 Fashion-MNIST test images, extracted once by Ray Data for the tests that share it."""
    from pipelines.config import DataConfig, ExtractConfig
    from pipelines.extract import extract_features

    out = tmp_path_factory.mktemp("tiny-features") / "features"
    extract_features(DataConfig(limit=1000), ExtractConfig(checkpoint=str(tiny_run), split="test"), out)
    return out


@pytest.fixture(scope="session")
def file_opens():
    """``file_opens(folder)``: a context manager counting the opens of every file under ``folder``
    by any process (Ray's workers included), by name relative to ``folder``: Linux inotify, so
    that a test counts how often a stage reads each image without any hook in the product."""
    import collections
    import contextlib
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)

    @contextlib.contextmanager
    def count(folder: Path):
        fd = libc.inotify_init1(os.O_NONBLOCK)
        assert fd >= 0, f"inotify_init1 failed: errno {ctypes.get_errno()}"
        # IN_OPEN | IN_CLOSE_NOWRITE: with the closes between them, two opens of a file in a row
        # are two events (identical events in a row are coalesced into one); nested opens (open,
        # open, close, close) still merge unless another file's event falls between them, so
        # test_data.py counts the decode's own opens
        folders = {libc.inotify_add_watch(fd, str(path).encode(), 0x20 | 0x10): path
                   for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]}
        opens: collections.Counter = collections.Counter()
        try:
            yield opens
            buffer = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(fd, 1 << 20):
                    buffer += chunk
            offset = 0
            while offset < len(buffer):
                watch, mask, _, length = struct.unpack_from("iIII", buffer, offset)
                name = buffer[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                assert not mask & 0x4000, "inotify queue overflowed"  # IN_Q_OVERFLOW
                if name and mask & 0x20 and not mask & 0x40000000:  # IN_ISDIR: a folder listed, not a file read
                    opens[str((folders[watch] / name).relative_to(folder))] += 1
                offset += 16 + length
        finally:
            os.close(fd)

    return count
