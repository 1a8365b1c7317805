"""The sweep's work for one k, and its tables. Plain numpy, pandas and scikit-learn.

Two steps per k. :func:`fit_k` fits every seed on the sample (``SweepData.X``: all rows of a
small table) and scores what only the sample can: the silhouette, and the bootstrap and
subsample resamples (clusterboot's protocol, refitted on the sample). The assignment pass
(``pipelines.assignment``) then puts every row of the table in a cluster of every fit and sums
count tables, from which :func:`k_result` computes the rest: cluster sizes, exact inertia,
ACC / NMI / ARI against the classes, and the agreement between seeds. The stability stage runs
:func:`fit_k` in Ray Tune trials and the pass over Ray Data; :func:`sweep_sequential` does both
in a plain loop.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import silhouette_score

from pipelines.assignment import KStats, assign_points, sample_share
from pipelines.config import NEAREST_KEPT, StabilityConfig, parse_transform
from pipelines.feature_table import scan_features
from pipelines.measures import (
    PARTITION_AGREEMENT,
    bootstrap_indices,
    class_agreement_from_table,
    jaccard_verdict,
    resample_stability,
    seed_agreement_from_tables,
    subsample_indices,
)
from pipelines.transforms import (FittedClusters, FittedTransform, fit_clusters, fit_seeds, fit_transform,
                                  umap_neighbors_within)


# Fixed seeds: every k is scored on the same silhouette sample and the same resamples, so that
# the differences between k are not differences between samples.
SILHOUETTE_SEED, BOOTSTRAP_SEED, SUBSAMPLE_SEED = 0, 1, 2
CLASS_MEASURES = ("acc", "nmi", "ari")
PROTOTYPES = NEAREST_KEPT  # per cluster of seed 0, the ids nearest its centre that the pass keeps


@dataclass(frozen=True, eq=False)
class SweepData:
    """The sample the sweep fits on (every row of a small table), and their classes when known."""

    X: NDArray[np.float32]  # [n, d]
    ids: NDArray[np.int64]  # [n]
    classes: NDArray[np.int64] | None  # [n], -1 where unknown; None when no point has a class
    class_names: list[str]  # by class index
    fingerprint: str  # names the table's rows: results of another table are refused
    source: str | None = None  # the feature table's path
    paths: NDArray[np.object_] | None = None  # [n] image file of each point (None where unknown)
    n_rows: int = 0  # rows of the whole table; 0: X holds them all
    share: float = 1.0  # the sample's share of the table (pipelines.assignment.sample_share)

    @property
    def rows(self) -> int:
        return self.n_rows or len(self.X)

    @property
    def whole(self) -> bool:
        """Whether X holds every row, so that the assignment pass can run on it in memory."""
        return self.rows == len(self.X)


def sweep_data(X: ArrayLike, *, ids: ArrayLike | None = None, classes: ArrayLike | None = None,
               class_names: list[str] | None = None, source: str | None = None,
               paths: ArrayLike | None = None) -> SweepData:
    """Sweep input from arrays (``ids`` default to row numbers, class names to the class numbers)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    ids = np.arange(len(X), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if classes is not None:
        classes = np.asarray(classes, dtype=np.int64)
        classes = classes if (classes >= 0).any() else None
    if class_names is None and classes is not None:
        class_names = [str(label) for label in range(classes.max() + 1)]
    paths = None if paths is None else np.asarray(paths, dtype=object)
    for name, column in (("ids", ids), ("classes", classes), ("paths", paths)):
        if column is not None and column.shape != (len(X),):
            raise ValueError(f"{name} must have shape ({len(X)},), got {column.shape}")
    return SweepData(X, ids, classes, list(class_names or []), content_fingerprint(X, ids, classes), source, paths)


def load_sweep_data(features: str | Path, sample_size: int | None = None) -> SweepData:
    """The sample of a feature table (all of it without ``sample_size``), read in one streaming pass
    that checks every row; the fingerprint covers every row's id and class and the sample's features."""
    rows = parquet_row_count(features)
    share = 1.0 if sample_size is None else sample_share(rows, sample_size)
    scan = scan_features(features, share)
    table = scan.sample
    known = scan.labels if (scan.labels >= 0).any() else None
    # a class that no sampled row has is still counted by the assignment pass: name every class
    names = table.class_names + [str(label) for label in range(len(table.class_names), scan.labels.max() + 1)]
    data = sweep_data(table.X, ids=table.ids, classes=table.labels, class_names=names,
                      source=str(Path(features).resolve()), paths=table.paths)
    return replace(data, fingerprint=content_fingerprint(table.X, scan.ids, known), n_rows=len(scan.ids),
                   share=share)


def parquet_row_count(features: str | Path) -> int:
    from pipelines.feature_table import parquet_files

    return sum(pq.ParquetFile(file).metadata.num_rows for file in parquet_files(Path(features)))


def content_fingerprint(X: np.ndarray, ids: np.ndarray, classes: np.ndarray | None) -> str:
    """sha256 of the rows. The table's own fingerprint names the model, and one model's train and
    test tables share it; the sweep's results belong to these very rows."""
    digest = hashlib.sha256()
    for array in (X, ids, classes if classes is not None else np.empty(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@dataclass(eq=False)
class KFit:
    """One k fitted on the sample: every seed's model, and the scores only the sample gives."""

    k: int
    models: FittedClusters
    silhouette: list[float]  # per seed, on the fixed silhouette sample
    bootstrap: dict | None  # see resample_summary; None without resamples
    subsample: dict | None
    seconds: float

    def scores(self) -> dict:
        return {name: value for name, value in asdict(self).items() if name != "models"}


@dataclass(eq=False)
class KResult:
    """Everything one k produced, over every row of the table."""

    k: int
    runs: list[dict]  # per seed: seed, inertia, silhouette, acc, nmi, ari
    seed_agreement: dict | None  # measure -> mean, std, n_pairs; None with one seed
    bootstrap: dict | None
    subsample: dict | None
    seconds: float
    sizes: list[int]  # seed 0: points per cluster 0..k-1
    prototypes: list[list[int]]  # seed 0: per cluster the ids nearest its centre, nearest first
    class_counts: NDArray[np.int64] | None = field(default=None, repr=False)  # [seeds, classes, k]
    centroids: NDArray[np.float64] | None = field(default=None, repr=False)  # [k, d] seed 0, the table's features

    def scores(self) -> dict:
        return {name: value for name, value in asdict(self).items() if name not in ("class_counts", "centroids")}


def fit_k(X: np.ndarray, k: int, config: StabilityConfig) -> KFit:
    """Fit the clusterer for every seed of ``k`` on the (transformed) sample ``X``; score the
    silhouette and the resamples of seed 0's clustering there."""
    started = time.perf_counter()
    models, labels = fit_seeds(X, k, config.seeds, config.clusterer, config.gmm_covariance)
    sample = silhouette_indices(len(X), config.silhouette_sample)
    silhouettes = [silhouette(X[sample], seed_labels[sample]) for seed_labels in labels]
    bootstrap, subsample = resample_scores(X, k, labels[0], config)
    return KFit(k, models, silhouettes, bootstrap, subsample, time.perf_counter() - started)


def k_result(fit: KFit, stats: KStats, with_classes: bool, seconds: float = 0.0) -> KResult:
    """The scores of one k from its fit and the assignment pass's sums (``seconds``: its share of the pass)."""
    inertia = stats.within_cluster_sum_of_squares()
    runs = [{"seed": seed, "inertia": float(inertia[seed]), "silhouette": fit.silhouette[seed],
             **(class_agreement_from_table(stats.class_counts[seed]) if with_classes
                else dict.fromkeys(CLASS_MEASURES, math.nan))}
            for seed in range(len(inertia))]
    agreement = seed_agreement_from_tables(stats.pair_counts) if len(stats.pair_counts) else None
    prototypes = [[int(i) for i in row if i >= 0] for row in stats.nearest_id]
    centroids = stats.raw_sums / np.maximum(stats.counts[0], 1)[:, None]
    return KResult(fit.k, runs, agreement, fit.bootstrap, fit.subsample, fit.seconds + seconds,
                   stats.counts[0].tolist(), prototypes, stats.class_counts if with_classes else None, centroids)


def silhouette_indices(n_points: int, size: int) -> NDArray[np.int64]:
    """The fixed sample the silhouette is computed on: the same points for every trial."""
    rng = np.random.default_rng(SILHOUETTE_SEED)
    return np.sort(rng.choice(n_points, size=min(size, n_points), replace=False))


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """NaN where it is undefined: fewer than 2 clusters in the sample, or one point per cluster."""
    n_clusters = len(np.unique(labels))
    return float(silhouette_score(X, labels)) if 2 <= n_clusters < len(labels) else math.nan


def resample_scores(X: np.ndarray, k: int, reference: np.ndarray,
                    config: StabilityConfig) -> tuple[dict | None, dict | None]:
    """Hennig's bootstrap and the subsample test of the seed-0 clustering ``reference``."""
    if config.resamples == 0:
        return None, None

    def refit(X_resample: np.ndarray, resample_no: int) -> np.ndarray:
        return fit_clusters(X_resample, k, resample_no, config.clusterer, config.gmm_covariance)

    n = len(X)
    draws = (bootstrap_indices(n, config.resamples, BOOTSTRAP_SEED),
             subsample_indices(n, config.resamples, SUBSAMPLE_SEED, config.subsample_fraction))
    bootstrap, subsample = (resample_summary(resample_stability(X, refit, reference, indices, config.bootstrap))
                            for indices in draws)
    return bootstrap, subsample


def resample_summary(stability: dict) -> dict:
    """The JSON-able part of ``resample_stability``'s answer (the per-resample matrix is dropped)."""
    return {"cluster_ids": stability["cluster_ids"].tolist(), "mean_jaccard": stability["mean_jaccard"].tolist(),
            "se_jaccard": stability["se_jaccard"].tolist(), "ari_mean": stability["ari_mean"],
            "ari_std": stability["ari_std"], "n_resamples": stability["n_resamples"]}


def sweep_sequential(X: ArrayLike, config: StabilityConfig, classes: ArrayLike | None = None) -> dict[int, KResult]:
    """The sweep as a plain loop in this process: the Tune trials' fits and the assignment pass's
    sums, without Tune, Ray Data or files."""
    data = sweep_data(X, classes=classes)
    _, points = transform_points(data.X, config)
    fits = {k: fit_k(points, k, config) for k in config.k_values}
    classes = data.classes if data.classes is not None else np.full(len(data.ids), -1)
    _, stats = assign_points(points, data.X, data.ids, classes, {k: fit.models for k, fit in fits.items()},
                             len(data.class_names), PROTOTYPES)
    return {k: k_result(fit, stats.per_k[k], data.classes is not None) for k, fit in fits.items()}


def transform_points(X: np.ndarray, config: StabilityConfig) -> tuple[FittedTransform, NDArray[np.float32]]:
    """The configured transform fitted on ``X``, and ``X`` through it (``X`` itself without one); UMAP
    takes no more neighbours than the clusters of the largest k would hold."""
    neighbors = umap_neighbors_within(len(X), max(config.k_values), config.umap_neighbors)
    return fit_transform(X, parse_transform(config.transform), pca_components=config.pca_components,
                         umap_components=config.umap_components, umap_neighbors=neighbors,
                         umap_min_dist=config.umap_min_dist, seed=config.transform_seed)


def summary_row(result: KResult) -> dict:
    """One k: agreement between seeds, resampling stability, agreement with classes, fit quality."""
    runs = pd.DataFrame(result.runs)
    row: dict = {"k": result.k}
    for measure in PARTITION_AGREEMENT:
        agreement = (result.seed_agreement or {}).get(measure, {})
        row[f"{measure}_mean"], row[f"{measure}_std"] = agreement.get("mean", math.nan), agreement.get("std", math.nan)
    row.update(bootstrap_summary(result.bootstrap))
    row["subsample_ari_mean"] = result.subsample["ari_mean"] if result.subsample else math.nan
    row["subsample_ari_std"] = result.subsample["ari_std"] if result.subsample else math.nan
    for measure in CLASS_MEASURES:
        name = "class_ari" if measure == "ari" else measure  # ari_* is the agreement between seeds
        row[f"{name}_mean"], row[f"{name}_std"] = runs[measure].mean(), runs[measure].std(ddof=0)
    row["inertia_mean"], row["silhouette_mean"] = runs["inertia"].mean(), runs["silhouette"].mean()
    row["seconds"] = result.seconds
    return row


def bootstrap_summary(bootstrap: dict | None) -> dict:
    """Mean and least bootstrap Jaccard over the clusters, and how many are stable (NaN without)."""
    jaccard = [value for value in (bootstrap or {}).get("mean_jaccard", []) if math.isfinite(value)]
    if not jaccard:
        return dict.fromkeys(("bootstrap_jaccard_mean", "bootstrap_jaccard_min", "stable_clusters"), math.nan)
    return {"bootstrap_jaccard_mean": float(np.mean(jaccard)), "bootstrap_jaccard_min": min(jaccard),
            "stable_clusters": sum(verdict_of(value) in ("stable", "highly stable") for value in jaccard)}


def verdict_of(jaccard: float) -> str:
    """Hennig's verdict; '' for a cluster absent from every resample, or without resamples."""
    return jaccard_verdict(jaccard) if math.isfinite(jaccard) else ""


def runs_table(results: list[KResult]) -> pd.DataFrame:
    return pd.DataFrame([{"k": result.k, **run} for result in results for run in result.runs])


def clusters_table(results: list[KResult]) -> pd.DataFrame:
    """One row per cluster of seed 0 of every k (with points), with its bootstrap and subsample Jaccard."""
    rows = []
    for result in results:
        bootstrap, bootstrap_se, subsample = (per_cluster(summary, name, result.k) for summary, name in (
            (result.bootstrap, "mean_jaccard"), (result.bootstrap, "se_jaccard"), (result.subsample, "mean_jaccard")))
        rows += [{"k": result.k, "cluster": cluster, "size": size, "bootstrap_jaccard": bootstrap[cluster],
                  "bootstrap_jaccard_se": bootstrap_se[cluster], "subsample_jaccard": subsample[cluster],
                  "verdict": verdict_of(bootstrap[cluster])}
                 for cluster, size in enumerate(result.sizes) if size > 0]
    return pd.DataFrame(rows)


def per_cluster(summary: dict | None, name: str, k: int) -> list[float]:
    """One per-cluster list of a resample summary, by cluster 0..k-1: NaN for a cluster the sample's
    seed-0 clustering did not have, and without resamples."""
    values = [math.nan] * k
    for cluster, value in zip((summary or {}).get("cluster_ids", []), (summary or {}).get(name, [])):
        values[cluster] = value
    return values


def contingency_table(class_names: list[str], result: KResult) -> pd.DataFrame:
    """Class x cluster counts of seed 0, on the points whose class is known."""
    return pd.DataFrame(result.class_counts[0], index=pd.Index(class_names, name="class"),
                        columns=[f"cluster_{cluster}" for cluster in range(result.k)])
