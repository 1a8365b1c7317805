"""The sweep's work for one k, and its tables: fits, scores between seeds, on resamples and
against the classes. Plain numpy, pandas and scikit-learn; the stability stage runs
:func:`evaluate_k` in Ray Tune trials, :func:`sweep_sequential` in a plain loop.

One k is the smallest piece of work that needs nothing from another: the resamples need the
seed-0 labels, the agreement between seeds needs every seed.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import silhouette_score

from pipelines.class_groups import class_cluster_table
from pipelines.config import StabilityConfig, parse_transform
from pipelines.feature_table import read_features
from pipelines.measures import (
    PARTITION_AGREEMENT,
    bootstrap_indices,
    class_agreement,
    jaccard_verdict,
    pairwise_seed_agreement_all,
    resample_stability,
    subsample_indices,
)
from pipelines.transforms import apply_transform, fit_clusters, within_cluster_sum_of_squares


# Fixed seeds: every k is scored on the same silhouette sample and the same resamples, so that
# the differences between k are not differences between samples.
SILHOUETTE_SEED, BOOTSTRAP_SEED, SUBSAMPLE_SEED = 0, 1, 2
CLASS_MEASURES = ("acc", "nmi", "ari")


@dataclass(frozen=True, eq=False)
class SweepData:
    """The points of the sweep, and their classes when known."""

    X: NDArray[np.float32]  # [n, d]
    ids: NDArray[np.int64]  # [n]
    classes: NDArray[np.int64] | None  # [n], -1 where unknown; None when no point has a class
    class_names: list[str]  # by class index
    fingerprint: str  # names these rows: results of another table are refused
    source: str | None = None  # the feature table's path
    paths: NDArray[np.object_] | None = None  # [n] image file of each point (None where unknown)


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


def load_sweep_data(features: str | Path) -> SweepData:
    table = read_features(features)
    return sweep_data(table.X, ids=table.ids, classes=table.labels, class_names=table.class_names,
                      source=str(Path(features).resolve()), paths=table.paths)


def content_fingerprint(X: np.ndarray, ids: np.ndarray, classes: np.ndarray | None) -> str:
    """sha256 of the rows. The table's own fingerprint names the model, and one model's train and
    test tables share it; the sweep's results belong to these very rows."""
    digest = hashlib.sha256()
    for array in (X, ids, classes if classes is not None else np.empty(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@dataclass(eq=False)
class KResult:
    """Everything one k produced: the labels of every seed and the scores computed from them."""

    k: int
    labels: NDArray[np.int32]  # [seeds, n]
    runs: list[dict]  # per seed: seed, inertia, silhouette, acc, nmi, ari
    seed_agreement: dict | None  # pairwise_seed_agreement_all; None with one seed
    bootstrap: dict | None  # see resample_summary; None without resamples
    subsample: dict | None
    seconds: float

    def scores(self) -> dict:
        return {name: value for name, value in asdict(self).items() if name != "labels"}


def fit(X: np.ndarray, k: int, seed: int, config: StabilityConfig) -> NDArray[np.int32]:
    return fit_clusters(X, k, seed, config.clusterer, config.gmm_covariance)


def evaluate_k(X: np.ndarray, k: int, config: StabilityConfig, classes: np.ndarray | None = None) -> KResult:
    """Fit the clusterer for every seed of ``k`` on the (transformed) points ``X``, and score the
    fits against each other, the classes and resamples of the points. The Tune trial and
    :func:`sweep_sequential` both run this."""
    started = time.perf_counter()
    labels = np.vstack([fit(X, k, seed, config) for seed in range(config.seeds)])
    sample = silhouette_indices(len(X), config.silhouette_sample)
    runs = [
        {"seed": seed, "inertia": within_cluster_sum_of_squares(X, seed_labels),
         "silhouette": silhouette(X[sample], seed_labels[sample]), **class_scores(classes, seed_labels)}
        for seed, seed_labels in enumerate(labels)
    ]
    # Per k in the trial rather than on the driver: 45 seed pairs of AMI take seconds, in parallel here.
    seed_agreement = pairwise_seed_agreement_all(labels) if config.seeds > 1 else None
    bootstrap, subsample = resample_scores(X, k, labels[0], config)
    return KResult(k, labels, runs, seed_agreement, bootstrap, subsample, time.perf_counter() - started)


def silhouette_indices(n_points: int, size: int) -> NDArray[np.int64]:
    """The fixed sample the silhouette is computed on: the same points for every trial."""
    rng = np.random.default_rng(SILHOUETTE_SEED)
    return np.sort(rng.choice(n_points, size=min(size, n_points), replace=False))


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """NaN where it is undefined: fewer than 2 clusters in the sample, or one point per cluster."""
    n_clusters = len(np.unique(labels))
    return float(silhouette_score(X, labels)) if 2 <= n_clusters < len(labels) else math.nan


def class_scores(classes: np.ndarray | None, labels: np.ndarray) -> dict[str, float]:
    """ACC, NMI and ARI against the classes, on the points whose class is known (NaN without)."""
    if classes is None:
        return dict.fromkeys(CLASS_MEASURES, math.nan)
    known = classes >= 0
    return class_agreement(classes[known], labels[known])


def resample_scores(X: np.ndarray, k: int, reference: np.ndarray,
                    config: StabilityConfig) -> tuple[dict | None, dict | None]:
    """Hennig's bootstrap and the subsample test of the seed-0 clustering ``reference``."""
    if config.resamples == 0:
        return None, None

    def refit(X_resample: np.ndarray, resample_no: int) -> np.ndarray:
        return fit(X_resample, k, resample_no, config)

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
    """The sweep as a plain loop in this process: the Tune path's work, without Tune or files."""
    data = sweep_data(X, classes=classes)
    points = transform_points(data.X, config)
    return {k: evaluate_k(points, k, config, data.classes) for k in config.k_values}


def transform_points(X: np.ndarray, config: StabilityConfig) -> NDArray[np.float32]:
    """``X`` through the configured transform (``X`` itself without one)."""
    steps = parse_transform(config.transform)
    if not steps:
        return X
    return apply_transform(X, steps, pca_components=config.pca_components, umap_components=config.umap_components,
                           umap_neighbors=config.umap_neighbors, umap_min_dist=config.umap_min_dist,
                           seed=config.transform_seed)


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
    """One row per cluster of seed 0 of every k, with its bootstrap and subsample Jaccard."""
    rows = []
    for result in results:
        # The Jaccard lists follow np.unique of the seed-0 labels too (resample_stability's order).
        cluster_ids, sizes = np.unique(result.labels[0], return_counts=True)
        bootstrap, bootstrap_se = resample_column(result.bootstrap, "mean_jaccard", len(cluster_ids)), \
            resample_column(result.bootstrap, "se_jaccard", len(cluster_ids))
        subsample = resample_column(result.subsample, "mean_jaccard", len(cluster_ids))
        rows += [{"k": result.k, "cluster": int(cluster), "size": int(size), "bootstrap_jaccard": boot,
                  "bootstrap_jaccard_se": se, "subsample_jaccard": sub, "verdict": verdict_of(boot)}
                 for cluster, size, boot, se, sub in zip(cluster_ids, sizes, bootstrap, bootstrap_se, subsample)]
    return pd.DataFrame(rows)


def resample_column(summary: dict | None, name: str, k: int) -> list[float]:
    """One per-cluster list of a resample summary; NaN without resamples (or results saved before it)."""
    return list((summary or {}).get(name) or [math.nan] * k)


def contingency_table(data: SweepData, result: KResult) -> pd.DataFrame:
    """Class x cluster counts of seed 0, on the points whose class is known."""
    known = data.classes >= 0
    counts = class_cluster_table(data.classes[known], result.labels[0][known], len(data.class_names), result.k)
    return pd.DataFrame(counts, index=pd.Index(data.class_names, name="class"),
                        columns=[f"cluster_{cluster}" for cluster in range(result.k)])
