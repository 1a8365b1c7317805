"""Feature transforms applied before clustering, and the clusterers.

A transform is a chain of steps, applied in order and fitted once per feature table (the sweep
stores the result and every (k, seed) fit and resample reuses it):

* ``standardize``: every feature to mean 0 and variance 1 (constant features are left at 0);
* ``l2``: every row to unit length (directions, not magnitudes, are compared);
* ``pca`` / ``pca-whiten``: the first ``pca_components`` principal components, whitened or not;
* ``umap``: a UMAP manifold embedding; the N2D recipe is 10 dimensions, 20 neighbours,
  min_dist 0 (McConville et al. 2020), which are the defaults.

Clusterers: ``kmeans`` (sklearn ``KMeans``, ``n_init=1``: the seeds are the repeats) and ``gmm``
(a Gaussian mixture, ``n_init=1``, initialised by k-means++ of the same seed).

Every function here is plain numpy/sklearn with a fixed seed: the same input and seed give the
same output, bit for bit (UMAP runs single-threaded to guarantee it).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from pipelines.config import CLUSTERERS


def standardize(X: ArrayLike) -> NDArray[np.float32]:
    """Mean 0 and variance 1 per feature; a constant feature becomes 0 rather than NaN."""
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    return ((X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def l2_normalize(X: ArrayLike) -> NDArray[np.float32]:
    """Every row scaled to unit Euclidean length; an all-zero row stays zero."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def pca(X: ArrayLike, n_components: int, whiten: bool, seed: int) -> NDArray[np.float32]:
    """The first ``n_components`` principal components (at most the table's rank allows)."""
    X = np.asarray(X, dtype=np.float32)
    n_components = min(n_components, *X.shape)
    return PCA(n_components=n_components, whiten=whiten, svd_solver="full", random_state=seed).fit_transform(X)


def umap_embedding(X: ArrayLike, n_components: int, n_neighbors: int, min_dist: float,
                   seed: int) -> NDArray[np.float32]:
    """UMAP (umap-learn) with a fixed ``random_state``, which makes it deterministic."""
    import umap  # imported here: numba compiles on first import, seconds that other paths need not pay

    X = np.asarray(X, dtype=np.float32)
    if n_neighbors >= len(X):
        raise ValueError(f"umap_neighbors={n_neighbors} needs more than {n_neighbors} rows; the table has {len(X)}")
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                        n_jobs=1)  # a fixed random_state runs single-threaded anyway; say so, quietly
    return reducer.fit_transform(X).astype(np.float32)


def apply_transform(X: ArrayLike, steps: list[str], *, pca_components: int = 50, umap_components: int = 10,
                    umap_neighbors: int = 20, umap_min_dist: float = 0.0, seed: int = 0) -> NDArray[np.float32]:
    """Fit and apply the chain ``steps`` (see :func:`parse_transform`) to ``X`` [n, d]."""
    X = np.asarray(X, dtype=np.float32)
    for step in steps:
        if step == "standardize":
            X = standardize(X)
        elif step == "l2":
            X = l2_normalize(X)
        elif step in ("pca", "pca-whiten"):
            X = pca(X, pca_components, whiten=step == "pca-whiten", seed=seed)
        elif step == "umap":
            X = umap_embedding(X, umap_components, umap_neighbors, umap_min_dist, seed)
        else:
            raise ValueError(f"transform: unknown step {step!r}")
    return np.ascontiguousarray(X, dtype=np.float32)


def fit_clusters(X: ArrayLike, k: int, seed: int, clusterer: str = "kmeans",
                 gmm_covariance: str = "full") -> NDArray[np.int32]:
    """Labels [n] of one fit of ``clusterer`` with ``k`` clusters and random state ``seed``."""
    if clusterer == "kmeans":
        labels = KMeans(n_clusters=k, random_state=seed, n_init=1).fit_predict(X)
    elif clusterer == "gmm":
        # reg_covar above sklearn's 1e-6: full covariances of 512-d features are otherwise singular
        mixture = GaussianMixture(n_components=k, covariance_type=gmm_covariance, random_state=seed, n_init=1,
                                  init_params="k-means++", reg_covar=1e-4)
        labels = mixture.fit_predict(X)
    else:
        raise ValueError(f"clusterer: unknown {clusterer!r}; use one of {', '.join(CLUSTERERS)}")
    return labels.astype(np.int32)


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
