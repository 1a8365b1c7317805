"""Every option of every stage, with its default, in one place.

Each stage reads one of these dataclasses; the jobs build their ``--help`` from them
(``pipelines.cli``), and the pipeline job composes them into one config file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASETS = ("fashion-mnist", "images", "parquet")
SPLITS = ("train", "test", "all")
IMAGE_MODES = ("L", "RGB")
BAD_IMAGE_POLICIES = ("error", "skip")
TRAIN_MODES = ("autoencoder", "classifier")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with the text its ``--help`` shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped for the model."""

    dataset: str = opt(
        "fashion-mnist",
        "fashion-mnist (the official IDX files), images (a folder with one sub-folder per "
        "class, or flat) or parquet (image shards in the featurelens image schema)",
    )
    data_dir: str | None = opt(
        None,
        "fashion-mnist: folder of the four IDX .gz files (else $FASHION_MNIST_DIR, "
        "/usr/share/datasets/fashion-mnist, torchvision's download); "
        "images / parquet: the folder to read",
    )
    image_size: str | None = opt(
        None,
        "HxW the images are resized to, e.g. 64x64 or 112x92; default: the source's native "
        "size (28x28 for Fashion-MNIST, the first image's size for a folder)",
    )
    mode: str = opt("L", "L (grayscale) or RGB")
    limit: int | None = opt(None, "use only the first N images of each split (quick runs)")
    test_fraction: float = opt(
        0.2, "images / parquet: share of the images held out as the test split (stable by path)"
    )
    on_bad_image: str = opt(
        "error",
        "error: stop and name every unreadable image; skip: leave them out and list them "
        "in the run directory",
    )

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("mode", self.mode, IMAGE_MODES)
        check_choice("on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.image_size is not None:
            parse_image_size(self.image_size)

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width), or None for the source's native size."""
        return None if self.image_size is None else parse_image_size(self.image_size)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


@dataclass
class TrainConfig:
    """Training of the autoencoder or the classifier with Ray Train. Defaults are the seed's."""

    mode: str = opt(
        "autoencoder", "autoencoder (MSE reconstruction) or classifier (cross-entropy on labels)"
    )
    epochs: int = opt(10, "epochs to train; a rerun of the same run directory resumes")
    batch_size: int = opt(64, "global batch; each worker takes batch_size // workers")
    lr: float = opt(1e-3, "Adam learning rate of the autoencoder")
    classifier_lr: float | None = opt(
        None, "Adam learning rate of the classifier; default lr / 10, as in the seed"
    )
    weight_decay: float = opt(1e-5, "Adam weight decay")
    lr_step: int = opt(20, "StepLR: multiply the learning rate by lr_gamma every lr_step epochs")
    lr_gamma: float = opt(0.1, "StepLR factor")
    workers: int = opt(2, "Ray Train workers (data-parallel)")
    cpus_per_worker: float | None = opt(
        None, "CPUs per worker; default: the cluster's CPUs less one for Ray Data, shared out"
    )
    gpus_per_worker: float = opt(0.0, "GPUs per worker (0: train on CPUs)")
    init_from: str | None = opt(
        None,
        "transfer: a run directory or model file whose encoder starts this training "
        "(a classifier's encoder for the autoencoder, or an autoencoder's under a classifier head)",
    )
    freeze_encoder: bool = opt(
        False, "classifier mode: train only the head (a linear probe of the encoder's features)"
    )
    max_failures: int = opt(1, "worker failures to recover from by restarting at the last checkpoint")
    seed: int = opt(0, "seed of weights initialisation and shuffling")

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, TRAIN_MODES)
        for name in ("epochs", "batch_size", "workers", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < self.workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be >= workers ({self.workers})")
        for name in ("lr", "weight_decay", "gpus_per_worker", "max_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.freeze_encoder and self.mode != "classifier":
            raise ValueError("freeze_encoder applies to mode classifier only")

    @property
    def learning_rate(self) -> float:
        if self.mode == "classifier":
            return self.classifier_lr if self.classifier_lr is not None else self.lr / 10
        return self.lr


def parse_image_size(text: str) -> tuple[int, int]:
    """'112x92' -> (112, 92), as (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image_size must look like HxW (e.g. 64x64), got {text!r}") from None
    if height < 8 or width < 8:
        raise ValueError(f"image_size must be at least 8x8, got {text!r}")
    return height, width


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
