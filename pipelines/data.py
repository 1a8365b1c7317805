"""Data sources: each yields a Ray Dataset with one image schema.

Columns of every source:

=============  ==========================================================
``id``          int64, stable and unique within the source
``image``       uint8 tensor (H, W) for mode L, (H, W, 3) for RGB
``label``       int64, null when unknown
``label_name``  string, null when unknown
``path``        string, null for array sources (Fashion-MNIST)
=============  ==========================================================

Sources: the official Fashion-MNIST IDX files, image folders (one sub-folder per class, or
flat and unlabelled), and Parquet image shards in this schema (``write_image_shards``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import SPLITS, DataConfig, check_choice, natural_key
from pipelines.errors import DataError
from pipelines.rundir import SKIPPED_IMAGES_FILE

if TYPE_CHECKING:
    import ray  # imported where used: the checks before Ray need none of it (a second saved)

log = logging.getLogger("featurelens.data")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_PER_CLASS = {"train": 6000, "test": 1000}
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = (".pgm", ".ppm", ".pbm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801
ROWS_PER_BLOCK = 2000
FILES_PER_BLOCK = 200
IMAGE_COLUMNS = ("id", "image", "label", "label_name", "path")


@dataclass
class ImageSource:
    """A loaded source: the dataset plus what the model and the report need to know about it."""

    dataset: ray.data.Dataset
    name: str
    split: str
    num_images: int
    class_names: list[str]
    height: int
    width: int
    channels: int
    folder: FolderDecode | None = None  # image folders: how the stage decodes them, the bad files met
    manifest: pa.Table | None = None  # image folders: the split's files (id, label, label_name, path)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, error) of the unreadable files the stage's decode has met so far, sorted."""
        return self.folder.bad_so_far() if self.folder else []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> str:
        return f"{self.height}x{self.width}"


def load_images(config: DataConfig, split: str = "train") -> ImageSource:
    """The configured source's split ('train', 'test' or 'all') as a Ray Dataset of the image schema."""
    check_choice("split", split, SPLITS)
    loaders = {
        "fashion-mnist": load_fashion_mnist,
        "images": load_image_folder,
        "parquet": load_image_shards,
    }
    return loaders[config.dataset](config, split)


# --- checks before Ray -----------------------------------------------------------------------------

PREFLIGHT_SECONDS = 2.0  # headers of a folder's first files; the stage's own decode checks every file


def check_source(config: DataConfig) -> tuple[int, int, int]:
    """Everything about the data that can be checked in a second, without Ray, so that a mistake
    fails before Ray starts and before anything is written: a data source is given, the folder
    exists, the Fashion-MNIST files are there, the shards have the image schema, the first images'
    headers are images'. Returns (height, width, channels) of the images the source will yield."""
    check_data_dir(config)
    if config.dataset == "fashion-mnist":
        if config.data_dir is not None:
            find_fashion_mnist(config.data_dir)
        native = (28, 28)
    elif config.dataset == "parquet":
        native = tuple(check_shards(Path(config.data_dir))[1].shape[:2])
    else:
        native = check_first_images(config)
    height, width = config.size or native
    return height, width, config.channels


def check_data_dir(config: DataConfig) -> None:
    """A folder source needs --data-dir, and an explicit --data-dir must be a folder."""
    if config.data_dir is None:
        if config.dataset != "fashion-mnist":
            what = {"images": "the folder of images (one sub-folder per class, or flat)",
                    "parquet": "the folder of Parquet image shards (python -m jobs.shards writes them)"}
            raise DataError(f"--dataset {config.dataset} needs --data-dir: {what[config.dataset]}")
        return
    if not Path(config.data_dir).is_dir():
        raise DataError(f"--data-dir {config.data_dir}: no such folder")


def check_first_images(config: DataConfig) -> tuple[int, int]:
    """In error mode, the headers of both splits' files for up to PREFLIGHT_SECONDS (a text file
    named .png, an empty file), naming the unreadable ones; returns the size of the first readable
    image. No pixel is decoded unless a bad file is found: the stage's decode checks every file."""
    folder, _ = list_image_folder(config.data_dir)
    paths = [path for split in ("train", "test") for path in split_manifest(folder, split, config)["path"].to_pylist()]
    if config.on_bad_image == "error":
        bad = preflight_bad_images(sorted(paths, key=natural_key), config.color)
        if bad:
            raise DataError(bad_images_message(bad, config.data_dir))
    return config.size or _first_readable_size(paths)


def preflight_bad_images(paths: list[str], mode: str) -> list[tuple[str, str]]:
    """(path, error) of the files among the first ``paths`` whose headers are not an image's,
    within PREFLIGHT_SECONDS; once one is found the job fails anyway, so up to PREFLIGHT_SECONDS
    more decode the files in full, to name the truncated ones too."""
    found: dict[str, str] = {}
    for check in (identify_image, lambda path: decode_image(path, 8, 8, mode)):
        deadline = time.monotonic() + PREFLIGHT_SECONDS
        for path in paths:
            if time.monotonic() > deadline:
                break
            try:
                if path not in found:
                    check(path)
            except DataError as error:
                found[path] = str(error)
        if not found:
            break
    return sorted(found.items())


# --- Fashion-MNIST -------------------------------------------------------------------------------


def find_fashion_mnist(data_dir: str | None = None) -> Path:
    """The folder with the four IDX files: ``data_dir``, $FASHION_MNIST_DIR, the Debian package's
    folder, else torchvision's download into ~/.cache/featurelens.

    A ``data_dir`` given explicitly must hold the files: DataError names the ones it lacks,
    rather than quietly reading another copy."""
    if data_dir and not _has_fashion_mnist(Path(data_dir)):
        missing = [name for name in sum(FASHION_MNIST_FILES.values(), ()) if not (Path(data_dir) / name).is_file()]
        raise DataError(f"{data_dir}: not a Fashion-MNIST folder, it lacks {', '.join(missing)}")
    tried = []
    for candidate in (data_dir, os.environ.get("FASHION_MNIST_DIR"), DEBIAN_FASHION_MNIST_DIR):
        if candidate:
            if _has_fashion_mnist(Path(candidate)):
                return Path(candidate)
            tried.append(candidate)
    cache = Path.home() / ".cache" / "featurelens" / "fashion-mnist"
    if not _has_fashion_mnist(cache):
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(cache.parent / "torchvision"), train=train, download=True)
            raw = cache.parent / "torchvision" / "FashionMNIST" / "raw"
            cache.mkdir(parents=True, exist_ok=True)
            for name in sum(FASHION_MNIST_FILES.values(), ()):
                (raw / name).replace(cache / name)
        except Exception as error:  # noqa: BLE001 - any failure here ends in the one message below
            raise DataError(
                "Fashion-MNIST not found. Give it one of three ways: --data-dir DIR (or "
                "$FASHION_MNIST_DIR) with the four IDX .gz files; the Debian package "
                f"(apt-get install dataset-fashion-mnist, into {DEBIAN_FASHION_MNIST_DIR}); or "
                f"network access for torchvision's download. Tried: {tried or 'no folder given'}; "
                f"download failed: {error}"
            ) from None
    return cache


def _has_fashion_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() for name in sum(FASHION_MNIST_FILES.values(), ()))


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read one gzipped IDX file, checking its magic number and that its size matches its header."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic, count = struct.unpack(">II", raw[:8])
    kind = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
    if magic != expected_magic:
        found = kind.get(magic, f"magic 0x{magic:08x}")
        raise DataError(f"{path}: expected an IDX {kind[expected_magic]} file, found {found}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = (count, *struct.unpack(f">{ndim - 1}I", raw[8:header]))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says {shape} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header} bytes: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist_arrays(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of 'train' or 'test', checked against the release."""
    folder = find_fashion_mnist(data_dir)
    image_file, label_file = (folder / name for name in FASHION_MNIST_FILES[split])
    images = read_idx(image_file, IDX_IMAGES_MAGIC)
    labels = read_idx(label_file, IDX_LABELS_MAGIC).astype(np.int64)
    per_class = FASHION_MNIST_PER_CLASS[split]
    if images.shape[1:] != (28, 28):
        raise DataError(f"{image_file}: expected 28x28 images, found {images.shape[1:]}")
    if len(images) != 10 * per_class or len(labels) != len(images):
        raise DataError(
            f"{image_file}, {label_file}: expected {10 * per_class} images and labels, "
            f"found {len(images)} and {len(labels)}"
        )
    counts = np.bincount(labels, minlength=10)
    if len(counts) != 10 or not np.all(counts == per_class):
        raise DataError(f"{label_file}: expected {per_class} labels of each of 10 classes, found {counts.tolist()}")
    return images, labels


def load_fashion_mnist(config: DataConfig, split: str) -> ImageSource:
    import ray

    parts = ("train", "test") if split == "all" else (split,)
    tables = []
    for part in parts:
        images, labels = fashion_mnist_arrays(part, config.data_dir)
        first_id = 0 if part == "train" else 10 * FASHION_MNIST_PER_CLASS["train"]
        ids = np.arange(first_id, first_id + len(images), dtype=np.int64)
        if config.limit is not None:
            images, labels, ids = images[: config.limit], labels[: config.limit], ids[: config.limit]
        images = resize_array(images, config)
        tables += _image_tables(ids, images, labels, FASHION_MNIST_CLASSES)
    num_images = sum(t.num_rows for t in tables)
    _, height, width, *_ = (num_images, *tables[0]["image"].type.shape)
    return ImageSource(
        dataset=ray.data.from_blocks(tables),  # see FolderDecode.dataset
        name="fashion-mnist",
        split=split,
        num_images=num_images,
        class_names=list(FASHION_MNIST_CLASSES),
        height=height,
        width=width,
        channels=config.channels,
    )


def resize_array(images: np.ndarray, config: DataConfig) -> np.ndarray:
    """Grayscale arrays to the configured size and mode (a no-op at the native size and mode L)."""
    size = config.size
    if (size is None or size == images.shape[1:3]) and config.color == "L":
        return images
    from PIL import Image

    height, width = size or images.shape[1:3]
    return np.stack([to_array(Image.fromarray(image), height, width, config.color) for image in images])


def _image_tables(ids, images, labels, class_names) -> list[pa.Table]:
    """Blocks of the image schema from arrays (labels known)."""
    from ray.data.extensions import ArrowTensorArray

    names = np.asarray(class_names, dtype=object)
    return [
        pa.table(
            {
                "id": pa.array(ids[i : i + ROWS_PER_BLOCK], pa.int64()),
                "image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images[i : i + ROWS_PER_BLOCK])),
                "label": pa.array(labels[i : i + ROWS_PER_BLOCK], pa.int64()),
                "label_name": pa.array(names[labels[i : i + ROWS_PER_BLOCK]], pa.string()),
                "path": pa.nulls(len(ids[i : i + ROWS_PER_BLOCK]), pa.string()),
            }
        )
        for i in range(0, len(ids), ROWS_PER_BLOCK)
    ]


# --- image folders -------------------------------------------------------------------------------


def list_image_folder(root: str | Path) -> tuple[pa.Table, list[str]]:
    """The folder's manifest (id, label, label_name, path; no pixels) and its class names.

    A folder with sub-folders is labelled by them (files beside the class folders, such as a
    README, belong to no class and are left out with a warning); a flat folder is unlabelled.
    Every file inside a class folder is listed, so that a stray non-image file is reported rather
    than silently dropped. Ids follow the natural order of the relative paths."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    entries = [entry for entry in root.iterdir() if not entry.name.startswith(".")]
    class_dirs = sorted((e for e in entries if e.is_dir()), key=lambda e: natural_key(e.name))
    if class_dirs:
        stray = sorted(e.name for e in entries if e.is_file())
        if stray:
            warn_stray_files(str(root), tuple(stray))
        files = [
            (path, label)
            for label, folder in enumerate(class_dirs)
            for path in sorted(_files_under(folder), key=lambda p: natural_key(str(p)))
        ]
        class_names = [folder.name for folder in class_dirs]
    else:
        files = [(path, None) for path in sorted(_files_under(root), key=lambda p: natural_key(str(p)))]
        class_names = []
    if not files:
        raise DataError(f"image folder {root} holds no files")
    labels = [label for _, label in files]
    manifest = pa.table(
        {
            "id": pa.array(np.arange(len(files)), pa.int64()),
            "label": pa.array(labels, pa.int64()),
            "label_name": pa.array([None if l is None else class_names[l] for l in labels], pa.string()),
            "path": pa.array([str(path) for path, _ in files], pa.string()),
        }
    )
    return manifest, class_names


@functools.lru_cache(maxsize=64)  # once per folder and process: a job lists its folder several times
def warn_stray_files(root: str, stray: tuple[str, ...]) -> None:
    log.warning("%s: %d file(s) beside the class folders belong to no class and are not read: %s",
                root, len(stray), ", ".join(stray[:5]) + (" ..." if len(stray) > 5 else ""))


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


def in_split(keys, split: str, test_fraction: float) -> np.ndarray:
    """Which of ``keys`` (paths or ids) belong to ``split``: the same key lands in the same split
    on every run, whatever else the corpus holds."""
    buckets = np.array([zlib.crc32(str(key).encode()) % 10_000 for key in keys], dtype=np.int64)
    is_test = buckets < int(round(test_fraction * 10_000))
    return np.ones(len(keys), bool) if split == "all" else is_test if split == "test" else ~is_test


def keep_split(batch: dict[str, np.ndarray], split: str, test_fraction: float) -> dict[str, np.ndarray]:
    """Ray Data batch function: the rows of ``batch`` in ``split`` (by id)."""
    keep = in_split(batch["id"], split, test_fraction)
    return {column: values[keep] for column, values in batch.items()}


def to_array(image, height: int, width: int, mode: str) -> np.ndarray:
    """A PIL image -> uint8 array (H, W) or (H, W, 3) of the configured size and mode."""
    from PIL import Image

    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_image(path: str, height: int | None, width: int | None, mode: str) -> np.ndarray:
    """Read and decode one file (to its own size where ``height`` is None); DataError names it
    when it is not a readable image."""
    with opened_image(path) as image:
        image.load()
        return to_array(image, height or image.height, width or image.width, mode)


def identify_image(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, its pixels left undecoded; DataError as decode_image."""
    with opened_image(path) as image:
        return image.height, image.width


@contextlib.contextmanager
def opened_image(path: str):
    """The file opened by PIL; a failure to open or decode it inside the block is a DataError
    naming the file and what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise DataError(f"{path}: not an image file (suffix not one of {' '.join(IMAGE_SUFFIXES)})")
    try:
        # The file object, not its name: given a name, PIL opens raw PGM/PPM files (ORL's faces) a
        # second time to memory-map their pixels.
        with open(path, "rb") as file, Image.open(file) as image:
            yield image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if not os.path.exists(path):
            reason = "no such file"
        else:
            reason = "empty file (0 bytes)" if os.path.getsize(path) == 0 else f"cannot decode: {error}"
        raise DataError(f"{path}: {reason}") from None


class BadImages:
    """The unreadable files met by a stage's decode tasks, wherever they ran (a Ray actor)."""

    def __init__(self) -> None:
        self.found: dict[str, str] = {}

    def add(self, bad: list[tuple[str, str]]) -> None:
        self.found.update(bad)

    def so_far(self) -> list[tuple[str, str]]:
        return sorted(self.found.items())


@dataclass(frozen=True)
class FolderDecode:
    """How an image folder's files become the image schema inside the stage that reads them,
    and the BadImages actor where every decode task reports the files it could not read."""

    data_dir: str
    height: int
    width: int
    mode: str
    on_bad_image: str
    bad_images: object  # a BadImages actor handle

    def dataset(self, manifest: pa.Table) -> ray.data.Dataset:
        """The manifest's files decoded, lazily: decoding and checking happen when a stage reads."""
        import ray

        # from_blocks, not from_arrow: that one runs a remote task per block for its metadata,
        # 1 s for 35 blocks on a fresh local Ray; from_blocks reads it on the driver.
        return ray.data.from_blocks(manifest_blocks(manifest)).map_batches(
            decode_images, batch_format="pyarrow", fn_kwargs=dict(decode=self))

    def bad_so_far(self) -> list[tuple[str, str]]:
        import ray

        return ray.get(self.bad_images.so_far.remote())


def folder_decode(config: DataConfig, height: int, width: int) -> FolderDecode:
    import ray

    actor = ray.remote(num_cpus=0)(BadImages).remote()
    return FolderDecode(str(config.data_dir), height, width, config.color, config.on_bad_image, actor)


def decode_images(batch: pa.Table, decode: FolderDecode) -> pa.Table:
    """Ray Data batch function: manifest rows -> rows of the image schema.

    The stage's one decode is also its check: the batch's unreadable files are reported to
    ``decode.bad_images``, then in error mode the task fails naming them (and the stage names
    every one met so far, see failing_on_bad_images); in skip mode their rows are left out."""
    import ray
    from ray.data.extensions import ArrowTensorArray

    images, bad = [], []
    for path in batch["path"].to_pylist():
        try:
            images.append(decode_image(path, decode.height, decode.width, decode.mode))
        except DataError as error:
            bad.append((path, str(error)))
    if bad:
        ray.get(decode.bad_images.add.remote(bad))
        if decode.on_bad_image == "error":
            raise DataError(bad_images_message(bad, decode.data_dir))
        batch = batch.filter(pa.compute.invert(pa.compute.is_in(batch["path"], pa.array([p for p, _ in bad]))))
    empty = np.zeros((0, decode.height, decode.width, *(() if decode.mode == "L" else (3,))), np.uint8)
    pixels = np.stack(images) if images else empty
    return batch.append_column("image", ArrowTensorArray.from_numpy(pixels)).select(list(IMAGE_COLUMNS))


@contextlib.contextmanager
def failing_on_bad_images(*sources: ImageSource):
    """A stage's work: when it fails after its decode met unreadable files (error mode), one
    DataError names every one met so far, in any worker, not only those of the task that failed."""
    try:
        yield
    except Exception as error:
        bad = sorted(entry for source in sources for entry in source.skipped)
        folder = next((source.folder for source in sources if source.folder), None)
        if not bad or folder.on_bad_image != "error":
            raise
        raise DataError(bad_images_message(bad, folder.data_dir)) from error


def load_image_folder(config: DataConfig, split: str) -> ImageSource:
    """An image folder's split as a lazy Ray Dataset. Nothing is decoded here: the stage that
    reads the dataset decodes each file once, and that decode finds the unreadable ones (see
    decode_images): error mode fails the stage naming them, skip mode leaves them out and lists
    them in ``skipped`` once the stage has read the data."""
    check_data_dir(config)
    folder, class_names = list_image_folder(config.data_dir)
    manifest = split_manifest(folder, split, config)
    if manifest.num_rows == 0:
        raise DataError(f"image folder {config.data_dir} has no images in split {split!r}")
    height, width = config.size or _first_readable_size(manifest["path"].to_pylist())
    decode = folder_decode(config, height, width)
    return ImageSource(
        dataset=decode.dataset(manifest),
        name=Path(config.data_dir).name,
        split=split,
        num_images=manifest.num_rows,
        class_names=class_names,
        height=height,
        width=width,
        channels=config.channels,
        folder=decode,
        manifest=manifest,
    )


def bad_images_message(skipped: list[tuple[str, str]], data_dir: str, shown: int = 20) -> str:
    """One line naming the unreadable files (the first ``shown``) and the two ways on."""
    listing = "; ".join(error for _, error in skipped[:shown])
    more = f"; ... and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (f"{len(skipped)} unreadable image(s) in {data_dir}: {listing}{more}. Fix or remove them, or pass "
            f"--on-bad-image skip to leave them out (listed in the run directory's {SKIPPED_IMAGES_FILE})")


def split_manifest(manifest: pa.Table, split: str, config: DataConfig) -> pa.Table:
    """The manifest rows of ``split``; with ``config.limit``, that many sampled from every class."""
    manifest = manifest.filter(pa.array(in_split(manifest["path"].to_pylist(), split, config.test_fraction)))
    if config.limit is None or config.limit >= manifest.num_rows:
        return manifest
    keep = sample_every_class(manifest["path"].to_pylist(), manifest["label"].to_pylist(), config.limit)
    return manifest.take(pa.array(keep))


def sample_every_class(keys: list, labels: list, limit: int) -> np.ndarray:
    """Sorted indices of ``limit`` of the rows, taken from the classes in turn (each class's rows in
    the order of a hash of their key): every class is represented, and the sample is the same on
    every run. ``--limit 40`` of the 40 ORL people takes one face of each, not 4 people's 10."""
    hashes = np.array([zlib.crc32(str(key).encode()) for key in keys], dtype=np.int64)
    classes = np.array([-1 if label is None else label for label in labels], dtype=np.int64)
    by_class = np.lexsort((hashes, classes))
    sorted_classes = classes[by_class]
    starts = np.flatnonzero(np.r_[True, sorted_classes[1:] != sorted_classes[:-1]])
    rank = np.empty(len(keys), dtype=np.int64)  # the row's place within its class
    rank[by_class] = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    return np.sort(np.lexsort((hashes, rank))[:limit])


def manifest_blocks(manifest: pa.Table) -> list[pa.Table]:
    """Small blocks, so that decoding spreads over every CPU even for a few hundred files."""
    rows = max(1, min(FILES_PER_BLOCK, -(-manifest.num_rows // 8)))
    return [manifest.slice(i, rows) for i in range(0, manifest.num_rows, rows)]


def _first_readable_size(paths: list[str]) -> tuple[int, int]:
    for path in paths:
        try:
            return identify_image(path)
        except DataError:
            continue
    raise DataError(f"no readable image among {len(paths)} file(s), so no size to default to; pass --image-size")


# --- Parquet image shards ------------------------------------------------------------------------


def to_shard_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """Ray Data batch function: image-schema rows -> a plain Arrow table (the image as Arrow's own
    fixed_shape_tensor, so that pyarrow reads the shards without Ray)."""
    labels = batch["label"]
    known = ~np.isnan(labels) if labels.dtype.kind == "f" else np.ones(len(labels), bool)
    return pa.table(
        {
            "id": pa.array(batch["id"], pa.int64()),
            "image": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(batch["image"])),
            "label": pa.array(np.where(known, labels, 0).astype(np.int64), pa.int64(), mask=~known),
            "label_name": pa.array(list(batch["label_name"]), pa.string()),
            "path": pa.array(list(batch["path"]), pa.string()),
        }
    )


def write_image_shards(source: ImageSource, out_dir: str | Path, overwrite: bool = False) -> None:
    """Write a source as Parquet image shards, streaming; the class names go in the table metadata."""
    from pipelines.storage import atomic_output

    with atomic_output(out_dir, folder=True, overwrite=overwrite) as tmp, failing_on_bad_images(source):
        source.dataset.map_batches(to_shard_table, batch_format="numpy").write_parquet(str(tmp))
        (tmp / CLASS_NAMES_FILE).write_text("\n".join(source.class_names) + "\n")
    if source.skipped:  # skip mode: known once written
        log.warning("left out %d unreadable image(s): %s", len(source.skipped), "; ".join(e for _, e in source.skipped))


CLASS_NAMES_FILE = "_class_names.txt"  # "_": pyarrow and Ray skip it when reading the folder


def load_image_shards(config: DataConfig, split: str) -> ImageSource:
    """Parquet image shards (as ``write_image_shards`` writes them), resized to the configured size."""
    check_data_dir(config)
    folder = Path(config.data_dir)
    files, image_type = check_shards(folder)
    native_height, native_width = image_type.shape[:2]
    height, width = config.size or (native_height, native_width)
    ids = pq.read_table(files, columns=["id"])["id"].to_numpy()  # the ids alone: small
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{folder}: column 'id' has duplicate values")
    num_images = len(ids) if split == "all" else int(np.sum(in_split(ids, split, config.test_fraction)))
    import ray

    dataset = ray.data.read_parquet(str(folder))
    if split != "all":
        dataset = dataset.map_batches(
            keep_split, batch_format="numpy", fn_kwargs=dict(split=split, test_fraction=config.test_fraction)
        )
    if config.limit is not None:
        num_images = min(num_images, config.limit)
        dataset = dataset.limit(config.limit)
    names_file = folder / CLASS_NAMES_FILE
    class_names = names_file.read_text().split("\n")[:-1] if names_file.exists() else []
    if (height, width) != (native_height, native_width) or config.color != "L" or len(image_type.shape) == 3:
        dataset = dataset.map_batches(
            resize_images, batch_format="numpy", fn_kwargs=dict(height=height, width=width, mode=config.color)
        )
    return ImageSource(
        dataset=dataset,
        name=folder.name,
        split=split,
        num_images=num_images,
        class_names=class_names,
        height=height,
        width=width,
        channels=config.channels,
    )


def check_shards(folder: Path) -> tuple[list[Path], pa.FixedShapeTensorType]:
    """The shard files of ``folder`` and their image type, after checking the schema of the first."""
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError(f"{folder}: no .parquet image shards found")
    schema = pq.read_schema(files[0])
    missing = [column for column in IMAGE_COLUMNS if column not in schema.names]
    if missing:
        raise DataError(f"{files[0]}: missing column(s) {', '.join(missing)} of the image schema {IMAGE_COLUMNS}")
    image_type = schema.field("image").type
    if not isinstance(image_type, pa.FixedShapeTensorType) or image_type.value_type != pa.uint8():
        raise DataError(f"{files[0]}: column 'image' must be a uint8 fixed_shape_tensor, found {image_type}")
    return files, image_type


def resize_images(batch: dict[str, np.ndarray], height: int, width: int, mode: str) -> dict[str, np.ndarray]:
    """Ray Data batch function: the ``image`` column to the configured size and mode."""
    from PIL import Image

    batch["image"] = np.stack([to_array(Image.fromarray(image), height, width, mode) for image in batch["image"]])
    return batch


# --- a few images by id (the report's) -----------------------------------------------------------


def images_by_id(config: DataConfig, paths: dict[int, str | None]) -> dict[int, np.ndarray]:
    """uint8 images of the ids in ``paths`` (id -> file, None for a source without files), each
    fetched alone: its file decoded as the stages decode it, else its row of the configured source
    (Fashion-MNIST's arrays, the Parquet shards' rows), never a scan that decodes the source."""
    size = config.size or (None, None)
    images = {image_id: decode_image(path, *size, config.color) for image_id, path in paths.items() if path}
    rest = sorted(image_id for image_id, path in paths.items() if not path)
    if rest and config.dataset == "fashion-mnist":
        first_test = 10 * FASHION_MNIST_PER_CLASS["train"]
        for split, ids in (("train", [i for i in rest if i < first_test]), ("test", [i for i in rest if i >= first_test])):
            if ids:
                rows = np.array(ids) - (0 if split == "train" else first_test)
                pixels = fashion_mnist_arrays(split, config.data_dir)[0][rows]
                images.update(zip(ids, resize_array(pixels, config)))
    elif rest:
        import pyarrow.dataset as ds

        rows = ds.dataset(check_shards(Path(config.data_dir))[0]).to_table(
            columns=["id", "image"], filter=ds.field("id").isin(rest))
        height, width = config.size or rows["image"].type.shape[:2]
        pixels = resize_images({"image": rows["image"].combine_chunks().to_numpy_ndarray()}, height, width, config.color)
        images.update(zip(rows["id"].to_pylist(), pixels["image"]))
    return images
