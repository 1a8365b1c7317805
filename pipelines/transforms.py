"""Feature transforms applied before clustering, and the clusterers.

A transform is a chain of steps, applied in order and fitted once per feature table (the sweep
stores the result and every (k, seed) fit and resample reuses it):

* ``standardize``: every feature to mean 0 and variance 1 (constant features are left at 0);
* ``l2``: every row to unit length (directions, not magnitudes, are compared);
* ``pca`` / ``pca-whiten``: the first ``pca_components`` principal components, whitened or not;
* ``umap``: a UMAP manifold embedding; the N2D recipe is 10 dimensions, 20 neighbours,
  min_dist 0 (McConville et al. 2020), which are the defaults (the sweep takes fewer neighbours
  where its clusters would be smaller: :func:`umap_neighbors_within`).

Clusterers: ``kmeans`` (sklearn ``KMeans``, ``n_init=1``: the seeds are the repeats), ``gmm``
(a Gaussian mixture, ``n_init=1``, initialised by k-means++ of the same seed) and
``kmeans-consensus`` (the partitions of ``CONSENSUS_RUNS`` KMeans fits combined into one:
:func:`consensus_partition`).

Every function here is plain numpy/sklearn with a fixed seed: the same input and seed give the
same output, bit for bit (UMAP runs single-threaded to guarantee it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from pipelines.config import CLUSTERERS


@dataclass
class FittedTransform:
    """A chain of transform steps fitted on one set of points (the sweep's sample), to be applied
    to any rows of the same table: the assignment pass maps it over every batch."""

    steps: list[tuple[str, object]] = field(default_factory=list)  # (step, what it learnt)

    def apply(self, X: ArrayLike) -> NDArray[np.float32]:
        X = np.asarray(X, dtype=np.float32)
        for step, state in self.steps:
            X = apply_step(step, state, X)
        return np.ascontiguousarray(X, dtype=np.float32)


def apply_step(step: str, state, X: np.ndarray) -> NDArray[np.float32]:
    if step == "standardize":
        mean, scale = state
        return ((X.astype(np.float64) - mean) / scale).astype(np.float32)
    if step == "l2":
        return l2_normalize(X)
    return state.transform(X).astype(np.float32)  # pca, umap: the fitted estimator


def l2_normalize(X: ArrayLike) -> NDArray[np.float32]:
    """Every row scaled to unit Euclidean length; an all-zero row stays zero."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def fit_step(step: str, X: np.ndarray, *, pca_components: int, umap_components: int, umap_neighbors: int,
             umap_min_dist: float, seed: int) -> tuple[object, NDArray[np.float32]]:
    """(what ``step`` learns from ``X``, ``X`` through it)."""
    if step == "standardize":  # a constant feature becomes 0 rather than NaN
        X64 = X.astype(np.float64)
        std = X64.std(axis=0)
        state = (X64.mean(axis=0), np.where(std > 0, std, 1.0))
        return state, apply_step(step, state, X)
    if step == "l2":
        return None, l2_normalize(X)
    if step in ("pca", "pca-whiten"):
        model = PCA(n_components=min(pca_components, *X.shape), whiten=step == "pca-whiten", svd_solver="full",
                    random_state=seed)
        return model, model.fit_transform(X).astype(np.float32)
    if step == "umap":
        return umap_fit(X, umap_components, umap_neighbors, umap_min_dist, seed)
    raise ValueError(f"transform: unknown step {step!r}")


def umap_fit(X: np.ndarray, n_components: int, n_neighbors: int, min_dist: float,
             seed: int) -> tuple[object, NDArray[np.float32]]:
    """UMAP (umap-learn) with a fixed ``random_state``, which makes it deterministic."""
    import umap  # imported here: numba compiles on first import, seconds that other paths need not pay

    if n_neighbors >= len(X):
        raise ValueError(f"umap_neighbors={n_neighbors} needs more than {n_neighbors} rows; the table has {len(X)}")
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                        n_jobs=1)  # a fixed random_state runs single-threaded anyway; say so, quietly
    return reducer, reducer.fit_transform(X).astype(np.float32)


def umap_neighbors_within(rows: int, k: int, most: int = 20) -> int:
    """UMAP's neighbours for ``rows`` points to be cut into ``k`` clusters: ``most``, but no more
    than the mean cluster's size (rows // k), since a neighbour graph wider than a cluster joins it
    to the next (ten faces a person: 10 neighbours; measured in RESULTS.md)."""
    return max(2, min(most, rows // k))


def fit_transform(X: ArrayLike, steps: list[str], *, pca_components: int = 50, umap_components: int = 10,
                  umap_neighbors: int = 20, umap_min_dist: float = 0.0,
                  seed: int = 0) -> tuple[FittedTransform, NDArray[np.float32]]:
    """Fit the chain ``steps`` (see :func:`parse_transform`) on ``X`` [n, d]: the fitted chain,
    and ``X`` through it (for UMAP its embedding of ``X``, which ``apply`` would only approximate)."""
    X = np.asarray(X, dtype=np.float32)
    fitted = FittedTransform()
    for step in steps:
        state, X = fit_step(step, X, pca_components=pca_components, umap_components=umap_components,
                            umap_neighbors=umap_neighbors, umap_min_dist=umap_min_dist, seed=seed)
        fitted.steps.append((step, state))
    return fitted, np.ascontiguousarray(X, dtype=np.float32)


def apply_transform(X: ArrayLike, steps: list[str], **settings) -> NDArray[np.float32]:
    """``X`` through the chain ``steps`` fitted on ``X`` itself (settings as :func:`fit_transform`)."""
    return fit_transform(X, steps, **settings)[1]


# --- clusterers ----------------------------------------------------------------------------------


def by_nearest_center(clusterer: str) -> bool:
    """Whether a point's cluster is that of its nearest centre (KMeans and its consensus, not a mixture)."""
    return clusterer != "gmm"


@dataclass(frozen=True, eq=False)
class FittedClusters:
    """Every seed's fit of one k: what assigning a new point needs. ``centers`` are KMeans's
    centroids or the mixture's means; a mixture also keeps its weights and precisions."""

    clusterer: str
    centers: NDArray[np.float32]  # [seeds, k, d]
    mixture: dict[str, np.ndarray] = field(default_factory=dict)  # gmm: weights, precisions_cholesky
    covariance: str = ""

    @property
    def seeds(self) -> int:
        return len(self.centers)

    @property
    def by_nearest_center(self) -> bool:
        return by_nearest_center(self.clusterer)

    def predict(self, seed: int, X: np.ndarray) -> NDArray[np.int32]:
        """The cluster of each row of ``X`` [n, d] under seed ``seed``'s fit."""
        if self.by_nearest_center:
            return nearest_center(X, self.centers[seed])[0]
        mixture = GaussianMixture(n_components=self.centers.shape[1], covariance_type=self.covariance)
        mixture.means_, mixture.weights_ = self.centers[seed].astype(np.float64), self.mixture["weights"][seed]
        mixture.precisions_cholesky_ = self.mixture["precisions_cholesky"][seed]
        return mixture.predict(X).astype(np.int32)


def nearest_center(X: np.ndarray, centers: np.ndarray) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """(index of the nearest of ``centers`` [k, d], squared distance to it) for each row of ``X``."""
    X = np.asarray(X, dtype=np.float32)
    distances = (X * X).sum(axis=1, keepdims=True) - 2 * X @ centers.T + (centers * centers).sum(axis=1)
    labels = distances.argmin(axis=1).astype(np.int32)
    return labels, np.maximum(distances[np.arange(len(X)), labels], 0).astype(np.float64)


CONSENSUS_RUNS = 5  # KMeans fits a consensus combines (measured in RESULTS.md: 5 repeated better than 10)


def consensus_partition(partitions: ArrayLike, k: int, seed: int) -> NDArray[np.int32]:
    """One partition into ``k`` clusters that agrees with most of ``partitions`` [m, n] (labels
    0..k-1): KMeans on each point's memberships, one 0/1 column per (partition, cluster), so
    points that the partitions keep together end together (Topchy, Jain & Punch 2005)."""
    partitions = np.asarray(partitions)
    memberships = np.concatenate([np.eye(k, dtype=np.float32)[labels] for labels in partitions], axis=1)
    return KMeans(n_clusters=k, random_state=seed, n_init=1).fit_predict(memberships).astype(np.int32)


class ConsensusKMeans:
    """``CONSENSUS_RUNS`` KMeans fits (seeds seed * runs ..) combined by :func:`consensus_partition`;
    each cluster's centre is its members' mean, and every point (new ones too) goes to the nearest."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = k, seed

    def fit(self, X: ArrayLike) -> "ConsensusKMeans":
        X = np.asarray(X, dtype=np.float32)
        runs = [KMeans(n_clusters=self.k, random_state=self.seed * CONSENSUS_RUNS + run, n_init=1).fit_predict(X)
                for run in range(CONSENSUS_RUNS)]
        labels = consensus_partition(runs, self.k, self.seed)
        self.cluster_centers_ = np.stack([X[labels == cluster].mean(axis=0) for cluster in range(self.k)])
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.int32]:
        return nearest_center(X, self.cluster_centers_)[0]


def fit_clusterer(X: ArrayLike, k: int, seed: int, clusterer: str = "kmeans", gmm_covariance: str = "full"):
    """One fitted clusterer (scikit-learn's, or :class:`ConsensusKMeans`) with ``k`` clusters and
    random state ``seed``."""
    if clusterer == "kmeans":
        return KMeans(n_clusters=k, random_state=seed, n_init=1).fit(X)
    if clusterer == "kmeans-consensus":
        return ConsensusKMeans(k, seed).fit(X)
    if clusterer == "gmm":
        # reg_covar above sklearn's 1e-6: full covariances of 512-d features are otherwise singular
        return GaussianMixture(n_components=k, covariance_type=gmm_covariance, random_state=seed, n_init=1,
                               init_params="k-means++", reg_covar=1e-4).fit(X)
    raise ValueError(f"clusterer: unknown {clusterer!r}; use one of {', '.join(CLUSTERERS)}")


def fit_clusters(X: ArrayLike, k: int, seed: int, clusterer: str = "kmeans",
                 gmm_covariance: str = "full") -> NDArray[np.int32]:
    """Labels [n] of one fit of ``clusterer`` with ``k`` clusters and random state ``seed``."""
    return fit_clusterer(X, k, seed, clusterer, gmm_covariance).predict(X).astype(np.int32)


def fit_seeds(X: ArrayLike, k: int, seeds: int, clusterer: str = "kmeans",
              gmm_covariance: str = "full") -> tuple[FittedClusters, NDArray[np.int32]]:
    """Fits of seeds 0 .. ``seeds``-1: the models, and their labels [seeds, n] of ``X``."""
    fits = [fit_clusterer(X, k, seed, clusterer, gmm_covariance) for seed in range(seeds)]
    labels = np.vstack([fit.predict(X) for fit in fits]).astype(np.int32)
    if by_nearest_center(clusterer):
        return FittedClusters(clusterer, np.stack([fit.cluster_centers_ for fit in fits]).astype(np.float32)), labels
    mixture = {"weights": np.stack([fit.weights_ for fit in fits]),
               "precisions_cholesky": np.stack([fit.precisions_cholesky_ for fit in fits])}
    return FittedClusters(clusterer, np.stack([fit.means_ for fit in fits]).astype(np.float32), mixture,
                          gmm_covariance), labels


def within_cluster_sum_of_squares(X: ArrayLike, labels: ArrayLike) -> float:
    """Sum of squared distances of the points to their cluster's mean: KMeans's inertia, defined
    for any partition (so a Gaussian mixture's clusters are scored on the same scale)."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    total = 0.0
    for cluster in np.unique(labels):
        members = X[labels == cluster]
        total += float(((members - members.mean(axis=0)) ** 2).sum())
    return total
