"""Every option of every stage, with its default, in one place.

Each stage reads one of these dataclasses; the jobs build their ``--help`` from them
(``pipelines.cli``), and the pipeline job composes them into one config file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("fashion-mnist", "images", "parquet")
SPLITS = ("train", "test", "all")
TRAIN_SPLITS = ("train", "all")
IMAGE_MODES = ("L", "RGB")
BAD_IMAGE_POLICIES = ("error", "skip")
TRAIN_MODES = ("autoencoder", "classifier")
LR_SCHEDULES = ("step", "cosine")
AUGMENTATIONS = ("none", "flip", "shift", "flip+shift")
CORRUPTIONS = ("none", "gaussian", "salt", "mask")
CLUSTER_INITS = ("kmeans", "umap")
CORRUPT_LEVELS = {"gaussian": 0.2, "salt": 0.2, "mask": 0.5}  # each corruption's default corrupt_level
TRANSFORM_STEPS = ("standardize", "l2", "pca", "pca-whiten", "umap")
CLUSTERERS = ("kmeans", "gmm", "kmeans-consensus")
GMM_COVARIANCES = ("full", "diag", "tied", "spherical")
BOOTSTRAP_PROTOCOLS = ("clusterboot", "duplicates")  # pipelines.measures documents them


def opt(default: Any, help: str, changes_output: bool = True) -> Any:
    """A dataclass field with the text its ``--help`` shows. ``changes_output=False`` marks an
    option that decides how or when the work runs, never what it computes: changing it leaves a
    finished pipeline stage valid."""
    return field(default=default, metadata={"help": help, "changes_output": changes_output})


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
    color: str = opt("L", "L (grayscale) or RGB")
    limit: int | None = opt(
        None, "use only N images of each split: of an image folder, N taken from every class in turn (stable, "
        "by a hash of the path); of Fashion-MNIST or shards, the first N (the release is shuffled)"
    )
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
        check_choice("color", self.color, IMAGE_MODES)
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
        return 1 if self.color == "L" else 3


@dataclass
class TrainConfig:
    """Training of the autoencoder or the classifier with Ray Train. Defaults are the seed's."""

    mode: str = opt(
        "autoencoder", "autoencoder (MSE reconstruction) or classifier (cross-entropy on labels)"
    )
    epochs: int = opt(10, "epochs to train; a rerun of the same run directory resumes")
    split: str = opt(
        "train", "the images trained on: train (the test split held out for the test loss) or all (every image, "
        "for a collection that is only to be clustered; cluster refinement learns the images it clusters best; "
        "the test loss is then of images seen in training)")
    batch_size: int = opt(64, "global batch; each worker takes batch_size // workers")
    lr: float = opt(1e-3, "Adam learning rate of the autoencoder")
    classifier_lr: float | None = opt(
        None, "Adam learning rate of the classifier; default lr / 10, as in the seed"
    )
    weight_decay: float = opt(1e-5, "Adam weight decay")
    classifier_dropout: float = opt(0.5, "dropout of the classifier head (nn.Dropout's default, as in the seed)")
    label_smoothing: float = opt(0.0, "classifier: cross-entropy against labels smoothed by this much (0: none)")
    lr_schedule: str = opt(
        "step", "step (the seed's StepLR: x lr_gamma every lr_step epochs) or cosine (decay to 0 over the epochs)"
    )
    lr_step: int = opt(20, "step schedule: multiply the learning rate by lr_gamma every lr_step epochs")
    lr_gamma: float = opt(0.1, "step schedule: the factor")
    augment: str = opt(
        "none",
        "none, flip (each training image mirrored left-right with probability 1/2), shift (moved by up to "
        "2 pixels each way, zeros shifted in) or flip+shift",
    )
    code_dim: int = opt(512, "autoencoder: width of the code (the features); 512 is the seed's")
    corrupt: str = opt(
        "none",
        "autoencoder: corruption of the training inputs, the loss taken against the clean image: none, gaussian "
        "(noise of std corrupt_level, clipped to [0, 1]), salt (a corrupt_level share of the pixels set to 0 or 1) "
        "or mask (a corrupt_level share of mask_patch x mask_patch patches zeroed)",
    )
    corrupt_level: float | None = opt(None, "strength of corrupt; default 0.2 (gaussian, salt), 0.5 (mask)")
    mask_patch: int = opt(4, "corrupt mask: side of the square patches zeroed (1: single pixels)")
    contrastive: float = opt(
        0.0, "autoencoder: weight of a contrastive term (SimCLR's NT-Xent) beside reconstruction: the batch holds "
        "two random views of each image (a resized crop keeping view_scale to all of its area, mirrored left-right "
        "half the time, view_jitter), and each view's projection is pulled towards the other view's and away from "
        "the other images' (0: off)")
    temperature: float = opt(0.5, "contrastive: temperature of NT-Xent's cosine similarities (SimCLR's CIFAR-10 value: 0.5)")
    view_scale: float = opt(0.7, "contrastive: the smallest share of an image's area that a view's crop keeps")
    view_jitter: float = opt(
        0.0, "contrastive: each view's contrast and brightness multiplied by factors in [1 - this, 1 + this] (0: none)")
    projection_dim: int = opt(
        128, "contrastive: outputs of the projection head (Linear, ReLU, Linear; training's own, not saved in the "
        "model) that NT-Xent is taken on; the features stay the code before it. 0: on the code itself")
    clusters: int = opt(
        0, "autoencoder: cluster refinement (IDEC) with this many centroids for `epochs` epochs, starting from "
        "the init_from model (its decoder too) or from pretrain_epochs of the recipe's own; its loss is IDEC's: "
        "reconstruction + cluster_weight x KL to the sharpened targets; 0: off")
    cluster_weight: float = opt(0.1, "cluster refinement: weight of the KL term beside reconstruction (IDEC's 0.1)")
    cluster_init: str = opt(
        "kmeans", "cluster refinement: where the centroids start: kmeans (IDEC's: KMeans of the codes) or umap "
        "(N2D's partition: KMeans of the codes' UMAP 10 embedding, then each cluster's mean code)")
    pretrain_epochs: int = opt(
        0, "cluster refinement without init_from: first train this many epochs with the other options "
        "(corrupt, contrastive; a run of its own in train/pretrain/), then refine from that model")
    workers: int = opt(2, "Ray Train workers (data-parallel); the batch-level terms (NT-Xent's negatives, IDEC's "
                       "sharpened target) are gathered over the whole batch, whatever the workers")
    cpus_per_worker: float | None = opt(
        None, "CPUs per worker; default: the cluster's CPUs less one for Ray Data, shared out"
    )
    gpus_per_worker: float = opt(0.0, "GPUs per worker (0: train on CPUs)")
    resource_timeout: float = opt(
        600.0, "seconds to wait for the autoscaler to add the nodes the plan needs when the cluster is too "
        "small now (cluster.yaml's GPU workers start at 0); a cluster without an autoscaler refuses at once",
        changes_output=False)
    init_from: str | None = opt(
        None,
        "transfer: a run directory or model file whose encoder starts this training "
        "(a classifier's encoder for the autoencoder, or an autoencoder's under a classifier head)",
    )
    freeze_encoder: bool = opt(
        False, "classifier mode: train only the head (a linear probe of the encoder's features)"
    )
    shard_cache_gib: float = opt(
        2.0, "each worker keeps its train and test shards in memory (on its GPU when it has one) when they "
        "hold at most this many GiB, else streams them from Ray Data (0: always stream)")
    max_failures: int = opt(1, "worker failures to recover from by restarting at the last checkpoint")
    seed: int = opt(0, "seed of weights initialisation and shuffling")

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, TRAIN_MODES)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("augment", self.augment, AUGMENTATIONS)
        check_choice("split", self.split, TRAIN_SPLITS)
        for name in ("epochs", "batch_size", "workers", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < self.workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be >= workers ({self.workers})")
        for name in ("lr", "weight_decay", "gpus_per_worker", "max_failures", "shard_cache_gib", "resource_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if self.freeze_encoder and self.mode != "classifier":
            raise ValueError("freeze_encoder applies to mode classifier only")
        self.check_recipe()

    def check_recipe(self) -> None:
        check_choice("corrupt", self.corrupt, CORRUPTIONS)
        for name in ("code_dim", "mask_patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("contrastive", "projection_dim", "clusters", "cluster_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.view_scale <= 1.0 or not 0.0 <= self.view_jitter < 1.0:
            raise ValueError(f"view_scale must be in (0, 1] and view_jitter in [0, 1), got {self.view_scale}, "
                             f"{self.view_jitter}")
        if self.corrupt_level is not None and not 0.0 <= self.corrupt_level <= 1.0:
            raise ValueError(f"corrupt_level must be in [0, 1], got {self.corrupt_level}")
        check_choice("cluster_init", self.cluster_init, CLUSTER_INITS)
        if self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.clusters and not (self.init_from or self.pretrain_epochs):
            raise ValueError("clusters (cluster refinement) starts from a trained autoencoder: set init_from "
                             "or pretrain_epochs")
        if self.pretrain_epochs and (not self.clusters or self.init_from):
            raise ValueError("pretrain_epochs trains the autoencoder that cluster refinement starts from: "
                             "it needs clusters and no init_from")
        if self.clusters and self.init_from and (self.corrupt != "none" or self.contrastive):
            raise ValueError("cluster refinement trains IDEC's loss alone; corrupt and contrastive shape the "
                             "autoencoder it starts from: set pretrain_epochs instead of init_from")
        if self.mode != "autoencoder" and (self.corrupt != "none" or self.contrastive or self.clusters):
            raise ValueError("corrupt, contrastive and clusters apply to mode autoencoder only")

    @property
    def corruption_level(self) -> float:
        return CORRUPT_LEVELS.get(self.corrupt, 0.0) if self.corrupt_level is None else self.corrupt_level

    @property
    def learning_rate(self) -> float:
        if self.mode == "classifier":
            return self.classifier_lr if self.classifier_lr is not None else self.lr / 10
        return self.lr


@dataclass
class ExtractConfig:
    """Feature extraction: Ray Data maps the encoder over the images into a Parquet table."""

    checkpoint: str | None = opt(None, "a training run directory or its model.pt")
    split: str = opt("test", "train, test or all")
    batch_size: int = opt(512, "images per encoder call")
    actors: int | None = opt(None, "encoder actors; default: one per spare CPU, or one per GPU")
    gpus_per_actor: float = opt(0.0, "GPUs per encoder actor (0: encode on CPUs)")
    resource_timeout: float = opt(
        600.0, "seconds to wait for the autoscaler to add the nodes the plan needs when the cluster is too "
        "small now (cluster.yaml's GPU workers start at 0); a cluster without an autoscaler refuses at once",
        changes_output=False)
    rows_per_file: int = opt(
        16_384, "rows per Parquet file of the table, at least (Ray Data's min_rows_per_file): each file is "
        "one write task, whose fixed cost dominates small files", changes_output=False)
    overwrite: bool = opt(False, "replace an existing feature table")

    def __post_init__(self) -> None:
        check_choice("split", self.split, SPLITS)
        for name in ("batch_size", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        for name in ("gpus_per_actor", "resource_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class StabilityConfig:
    """The clustering sweep over k x seeds with Ray Tune: transform, clusterer, stability measures."""

    k: str = opt("2-10", "cluster counts: a range 2-10 or a list 2,4,10")
    seeds: int = opt(10, "clusterer seeds per k (n_init=1 each)")
    resamples: int = opt(
        100, "bootstrap and 80%-subsample resamples per k (0: skip them); 100, as Hennig recommends, keeps "
        "the standard error of a cluster's mean Jaccard at most about 0.03")
    bootstrap: str = opt(
        "clusterboot",
        "bootstrap protocol: clusterboot (fpc::clusterboot's default, multipleboot=FALSE: the clusterer is "
        "refitted on the distinct drawn points, and a cluster with no point in a resample scores 0 and "
        "counts) or duplicates (refitted on the drawn rows with their repeats, an absent cluster left out "
        "of its mean; the earlier protocol: means differ by about 0.01-0.04 per k)")
    subsample_fraction: float = opt(0.8, "share of the points in each subsample")
    silhouette_sample: int = opt(2000, "points in the fixed sample the silhouette is computed on")
    sample_size: int = opt(
        100_000,
        "rows every fit and resample is made on: a reproducible sample (a hash of each id), all rows when "
        "the table is no larger; one streaming pass then assigns every row to every fit's clusters")
    cpus_per_trial: float | None = opt(
        None,
        "CPUs each Tune trial (one k, all its seeds and resamples) holds; its fits use as many threads. "
        "Default: the cluster's CPUs shared out over the k to compute, at least 1",
    )
    resource_timeout: float = opt(
        600.0, "seconds to wait for the autoscaler to add the nodes cpus_per_trial needs when the cluster is "
        "too small now; a cluster without an autoscaler refuses at once",
        changes_output=False)
    heatmap_k: int | None = opt(
        None,
        "k whose class x cluster counts (seed 0) are drawn as a heatmap; default: the number of classes "
        "when swept, else the smallest k (the pipeline: its re-clustering k)",
    )
    transform: str = opt(
        "none",
        "feature transform before clustering, fitted once per table: none, or steps applied in order "
        "from standardize, l2, pca, pca-whiten, umap (e.g. l2,umap)",
    )
    pca_components: int = opt(50, "components kept by the pca and pca-whiten steps")
    umap_components: int = opt(10, "dimensions of the umap step's embedding (N2D: 10)")
    umap_neighbors: int = opt(20, "neighbours of the umap step (N2D: 20); fewer where the largest k leaves "
                              "fewer rows a cluster (rows // k: a wider graph joins clusters)")
    umap_min_dist: float = opt(0.0, "min_dist of the umap step (N2D: 0)")
    clusterer: str = opt("kmeans", "kmeans, gmm (a Gaussian mixture), or kmeans-consensus (5 KMeans fits combined "
                         "into one partition); n_init=1, the seeds are the repeats")
    gmm_covariance: str = opt("full", "covariance type of gmm: full, diag, tied or spherical")
    transform_seed: int = opt(0, "random state of the pca and umap steps")
    compare_runs: str | None = opt(
        None,
        "representation stability: stability folders of autoencoders trained with other seeds "
        "(comma list); the partitions of this sweep are compared with theirs, point by point",
    )
    attributes: str | None = opt(
        None,
        "what the clusters mean: a CSV of per-image attributes keyed by a path or id column, any further "
        "columns categorical or numeric (e.g. liked = yes/no); findings.json and the report give each "
        "cluster's enriched values (hypergeometric test, Benjamini-Hochberg adjusted) and numeric means",
    )
    attribute_pattern: str | None = opt(
        None,
        "attributes parsed from each image's path by a regular expression with named groups, e.g. "
        "'/s(?P<person>[0-9]+)/'; needs a table with paths",
    )

    def __post_init__(self) -> None:
        ks = self.k_values
        if min(ks) < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.resamples < 0:
            raise ValueError(f"resamples must be >= 0, got {self.resamples}")
        if self.sample_size < 2:
            raise ValueError(f"sample_size must be >= 2, got {self.sample_size}")
        check_choice("bootstrap", self.bootstrap, BOOTSTRAP_PROTOCOLS)
        if not 0.0 < self.subsample_fraction < 1.0:
            raise ValueError(f"subsample_fraction must be in (0, 1), got {self.subsample_fraction}")
        if self.cpus_per_trial is not None and self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.resource_timeout < 0:
            raise ValueError(f"resource_timeout must be >= 0, got {self.resource_timeout}")
        if self.heatmap_k is not None and self.heatmap_k not in ks:
            raise ValueError(f"heatmap_k={self.heatmap_k} is not among the k swept ({self.k})")
        parse_transform(self.transform)
        check_attribute_pattern(self.attribute_pattern)
        check_choice("clusterer", self.clusterer, CLUSTERERS)
        check_choice("gmm_covariance", self.gmm_covariance, GMM_COVARIANCES)
        for name in ("pca_components", "umap_components"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.umap_neighbors < 2:
            raise ValueError(f"umap_neighbors must be >= 2, got {self.umap_neighbors}")
        if not 0.0 <= self.umap_min_dist <= 1.0:
            raise ValueError(f"umap_min_dist must be in [0, 1], got {self.umap_min_dist}")

    @property
    def k_values(self) -> list[int]:
        return parse_k(self.k)


RECLUSTER_METHODS = ("membership", "centroid", "seed")


@dataclass
class ReclusterConfig:
    """Class re-clustering: classes grouped by how they spread over the clusters."""

    k: int = opt(2, "the clustering (k of the sweep) whose classes are re-clustered")
    k_re: int = opt(2, "groups to re-cluster the classes into")
    method: str = opt("membership", "membership (default), centroid, or seed (the seed's table; k = 2 only)")
    min_share: float = opt(0.5, "report class groups that recur in at least this share of seeds")
    allow_nominal_mean: bool = opt(
        False, "let method seed run for k > 2 (the legacy computation on nominal cluster indices; warns)"
    )

    def __post_init__(self) -> None:
        check_choice("method", self.method, RECLUSTER_METHODS)
        if self.k < 2 or self.k_re < 2:
            raise ValueError(f"k and k_re must be >= 2, got k={self.k}, k_re={self.k_re}")
        if not 0.0 < self.min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")


NEAREST_KEPT = 16  # per cluster of seed 0, the ids nearest its centre that the sweep keeps for the report


@dataclass
class ReportConfig:
    """The run report."""

    prototype_k: str = opt(
        "auto", "k whose decoded cluster prototypes are shown: a list 2,10, or auto (the re-clustered k "
        "and the number of classes)"
    )
    nearest: int = opt(8, f"real images shown beside each decoded prototype (at most {NEAREST_KEPT})")

    def __post_init__(self) -> None:
        if self.prototype_k != "auto":
            parse_k(self.prototype_k)
        if not 1 <= self.nearest <= NEAREST_KEPT:
            raise ValueError(f"nearest must be in 1..{NEAREST_KEPT} (the sweep keeps the {NEAREST_KEPT} images "
                             f"nearest each cluster's centre), got {self.nearest}")


def natural_key(text: object) -> list:
    """Sort key that orders digits by value: s2 before s10.

    >>> sorted(["s10", "s2", "s1", "Bag"], key=natural_key)
    ['Bag', 's1', 's2', 's10']
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def parse_k(text: str) -> list[int]:
    """'2-10' -> [2, ..., 10]; '2,4,10' -> [2, 4, 10]; '2-5,10,40' -> [2, 3, 4, 5, 10, 40]."""
    values: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"k {text}: write a range 2-10, a list 2,4,10 or both, 2-10,20,40")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"k {text}: the range {low}-{high} runs backwards; write {high}-{low}")
        values.update(range(low, high + 1))
    return sorted(values)


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


def check_attribute_pattern(pattern: str | None) -> None:
    """A pattern must compile and name at least one group (each group is an attribute)."""
    if pattern is None:
        return
    try:
        groups = re.compile(pattern).groupindex
    except re.error as error:
        raise ValueError(f"attribute_pattern {pattern!r} is not a regular expression: {error}") from None
    if not groups:
        raise ValueError(f"attribute_pattern {pattern!r} has no named group, e.g. (?P<person>[0-9]+)")


def parse_transform(spec: str) -> list[str]:
    """``"none"`` -> [], ``"l2,umap"`` -> ["l2", "umap"]; unknown steps are refused by name."""
    if spec.strip().lower() in ("", "none"):
        return []
    steps = [step.strip().lower() for step in spec.split(",")]
    unknown = [step for step in steps if step not in TRANSFORM_STEPS]
    if unknown:
        raise ValueError(f"transform: unknown step {unknown[0]!r} in {spec!r}; "
                         f"use none or a comma list of {', '.join(TRANSFORM_STEPS)}")
    return steps
