"""Class re-clustering: regroup classes by how they spread over clusters.

Each class is described by one vector, and the class vectors are grouped with
KMeans into ``k_re`` groups. The description is the method:

* ``membership`` (default): the class's distribution over the ``k`` clusters;
* ``centroid``: the class's mean feature vector;
* ``seed``: mean and std of the class's cluster *index*, as the original seed
  code did. Cluster indices are nominal, so the mean only means something for
  ``k = 2``, where it equals the share of the class in cluster 1 and the method
  agrees with ``membership``. It is refused for ``k > 2``.

(The seed code also assigned each image to the argmax of ``KMeans.fit_transform``
distances, the *farthest* centroid; the clusterers here return labels, the nearest.)

:func:`co_assignment` and :func:`recurring_groups` summarise the groupings of
many seeds.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans

from pipelines.measures import check_label_pair, check_labels, pair_counts


def class_cluster_table(
    class_labels: ArrayLike, cluster_labels: ArrayLike, n_classes: int, k: int
) -> NDArray[np.int64]:
    """Count the points of every class in every cluster.

    Parameters
    ----------
    class_labels : array-like of shape (n_points,)
        Class ids in ``[0, n_classes)``.
    cluster_labels : array-like of shape (n_points,)
        Cluster ids in ``[0, k)``.
    n_classes, k : int

    Returns
    -------
    ndarray of shape (n_classes, k), dtype int64
        Empty classes and clusters keep their (zero) row and column.
    """
    classes, clusters = check_label_pair(
        class_labels, cluster_labels, ("class_labels", "cluster_labels")
    )
    check_labels(classes, "class_labels", n_ids=n_classes)
    check_labels(clusters, "cluster_labels", n_ids=k)
    return pair_counts(classes, clusters, n_classes, k)


def membership(counts: ArrayLike) -> NDArray[np.float64]:
    """Each class's distribution over the clusters.

    Parameters
    ----------
    counts : array-like of shape (n_classes, k)
        As returned by :func:`class_cluster_table`.

    Returns
    -------
    ndarray of shape (n_classes, k)
        Rows sum to 1.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2 or (counts < 0).any():
        raise ValueError("counts must be a 2-D table of non-negative counts")
    totals = counts.sum(axis=1, keepdims=True)
    if (totals == 0).any():
        empty = np.flatnonzero(totals[:, 0] == 0).tolist()
        raise ValueError(f"classes {empty} have no points: their distribution is undefined")
    return counts / totals


@dataclass(frozen=True, eq=False)
class ReclusterResult:
    """The grouping of the classes and the per-class table it was computed from.

    Attributes
    ----------
    method : str
    class_ids : ndarray of shape (n_classes,)
        Sorted distinct class labels; row ``i`` of everything below is class
        ``class_ids[i]``.
    groups : ndarray of shape (n_classes,), dtype int
        Group of each class.
    table : dict of str -> ndarray with n_classes rows
        Always ``count`` (points per class), plus the method's description:
        ``mean_cluster_index`` and ``std_cluster_index`` (seed),
        ``membership`` (membership) or ``class_mean`` (centroid).
    """

    method: str
    class_ids: NDArray[np.int64]
    groups: NDArray[np.int64]
    table: dict[str, np.ndarray]


@dataclass(frozen=True)
class _ReclusterInputs:
    """The inputs of :func:`regroup_classes`; each method takes the view it needs."""

    method: str
    class_counts: NDArray[np.int64] | None  # [n_classes, k]
    means: NDArray[np.float64] | None  # [n_classes, n_features]
    sizes: NDArray[np.int64]  # [n_classes]
    allow_nominal_mean: bool

    def counts(self) -> NDArray[np.int64]:
        if self.class_counts is None:
            raise ValueError(f"method={self.method!r} needs cluster_labels and k")
        return self.class_counts

    def class_means(self) -> NDArray[np.float64]:
        if self.means is None:
            raise ValueError(f"method={self.method!r} needs X")
        return self.means


# What a method returns: its per-class table, and one vector per class for KMeans to group.
Description = tuple[dict[str, np.ndarray], NDArray[np.float64]]


def _seed_method(inputs: _ReclusterInputs) -> Description:
    """Mean and std of the cluster index of each class; groups on the mean."""
    counts = inputs.counts()
    k = counts.shape[1]
    if k > 2:
        reason = (
            f"method='seed' averages cluster indices, which are nominal: for k={k} the mean "
            "and std depend on the arbitrary numbering of the clusters and mean nothing"
        )
        if not inputs.allow_nominal_mean:
            raise ValueError(
                f"{reason}. Use method='membership', or pass allow_nominal_mean=True "
                "to reproduce the legacy computation."
            )
        warnings.warn(f"{reason}.", stacklevel=3)
    share = membership(counts)
    cluster_index = np.arange(k)
    mean = share @ cluster_index
    std = np.sqrt((share * (cluster_index - mean[:, None]) ** 2).sum(axis=1))
    table = {"count": counts.sum(axis=1), "mean_cluster_index": mean, "std_cluster_index": std}
    return table, mean[:, None]


def _membership_method(inputs: _ReclusterInputs) -> Description:
    """Distribution of each class over the clusters."""
    counts = inputs.counts()
    share = membership(counts)
    return {"count": counts.sum(axis=1), "membership": share}, share


def _centroid_method(inputs: _ReclusterInputs) -> Description:
    """Mean feature vector of each class."""
    means = inputs.class_means()
    return {"count": inputs.sizes, "class_mean": means}, means


# Method name -> function describing each class by one vector (plus its table).
RECLUSTER_METHODS: dict[str, Callable[[_ReclusterInputs], Description]] = {
    "seed": _seed_method,
    "membership": _membership_method,
    "centroid": _centroid_method,
}


def recluster_classes(
    method: str = "membership",
    *,
    class_labels: ArrayLike,
    cluster_labels: ArrayLike | None = None,
    X: ArrayLike | None = None,
    k: int | None = None,
    k_re: int,
    seed: int = 0,
    allow_nominal_mean: bool = False,
) -> ReclusterResult:
    """Group the classes into ``k_re`` groups by how they spread over the clusters.

    Parameters
    ----------
    method : {"membership", "centroid", "seed"}
        See the module docstring.
    class_labels : array-like of shape (n_points,)
        Class of each point (any integer ids).
    cluster_labels : array-like of shape (n_points,), optional
        Cluster of each point, ids in ``[0, k)``; needed by membership and seed.
    X : array-like of shape (n_points, n_features), optional
        Features; needed by centroid.
    k : int, optional
        Number of clusters; needed by membership and seed.
    k_re : int
        Number of groups, ``2 <= k_re < n_classes``.
    seed : int
        ``random_state`` of the KMeans that groups the classes.
    allow_nominal_mean : bool
        Let method ``seed`` run for ``k > 2`` (with a warning).

    Returns
    -------
    ReclusterResult
    """
    class_ids, class_index = np.unique(check_labels(class_labels, "class_labels"), return_inverse=True)
    counts = None
    if cluster_labels is not None and k is not None:
        counts = class_cluster_table(class_index, cluster_labels, class_ids.size, k)
    means = None
    if X is not None:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or len(X) != class_index.size:
            raise ValueError(f"X must have shape (n_points={class_index.size}, n_features), got {X.shape}")
        means = np.vstack([X[class_index == row].mean(axis=0) for row in range(class_ids.size)])
    return regroup_classes(method, class_ids=class_ids, class_counts=counts, class_means=means,
                           class_sizes=np.bincount(class_index, minlength=class_ids.size), k_re=k_re, seed=seed,
                           allow_nominal_mean=allow_nominal_mean)


def regroup_classes(method: str = "membership", *, class_ids: ArrayLike, class_sizes: ArrayLike,
                    class_counts: ArrayLike | None = None, class_means: ArrayLike | None = None, k_re: int,
                    seed: int = 0, allow_nominal_mean: bool = False) -> ReclusterResult:
    """:func:`recluster_classes` from per-class tables instead of per-point labels: the counts
    ``class_counts`` [n_classes, k] (membership, seed), the mean feature vectors ``class_means``
    [n_classes, n_features] (centroid) and ``class_sizes`` [n_classes], rows in the order of
    ``class_ids``. The stability sweep's assignment pass sums exactly these."""
    if method not in RECLUSTER_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(RECLUSTER_METHODS)}")
    class_ids = np.asarray(class_ids)
    if k_re < 2:
        raise ValueError(f"k_re must be at least 2, got {k_re}")
    if k_re >= class_ids.size:
        raise ValueError(
            f"k_re={k_re} must be below the number of classes ({class_ids.size}): "
            "otherwise every class is alone in its group by construction"
        )
    inputs = _ReclusterInputs(method, None if class_counts is None else np.asarray(class_counts, dtype=np.int64),
                              None if class_means is None else np.asarray(class_means, dtype=float),
                              np.asarray(class_sizes, dtype=np.int64), allow_nominal_mean)
    table, description = RECLUSTER_METHODS[method](inputs)
    # Only n_classes points: many restarts cost nothing and make the grouping
    # depend less on `seed`.
    groups = KMeans(n_clusters=k_re, n_init=10, random_state=seed).fit_predict(description)
    return ReclusterResult(method, class_ids, groups.astype(np.int64), table)


def _check_groupings(groupings: ArrayLike) -> NDArray[np.int64]:
    groupings = np.asarray(groupings)
    if groupings.ndim != 2:
        raise ValueError(f"groupings must have shape (n_seeds, n_classes), got {groupings.shape}")
    return check_labels(groupings.ravel(), "groupings").reshape(groupings.shape)


def canonical_partition(groups: ArrayLike) -> frozenset[frozenset[int]]:
    """A grouping as a set of sets of class indices, blind to the group ids.

    Parameters
    ----------
    groups : array-like of shape (n_classes,)
        Group of each class.

    Returns
    -------
    frozenset of frozenset of int
    """
    groups = check_labels(groups, "groups")
    return frozenset(frozenset(np.flatnonzero(groups == g).tolist()) for g in np.unique(groups))


def co_assignment(groupings: ArrayLike) -> NDArray[np.float64]:
    """Share of seeds in which two classes fall in the same group.

    Parameters
    ----------
    groupings : array-like of shape (n_seeds, n_classes)
        One grouping per seed.

    Returns
    -------
    ndarray of shape (n_classes, n_classes)
        Symmetric, with ones on the diagonal.
    """
    groupings = _check_groupings(groupings)
    return (groupings[:, :, None] == groupings[:, None, :]).mean(axis=0)


def recurring_groups(
    groupings: ArrayLike, min_share: float = 0.5
) -> list[tuple[tuple[int, ...], float]]:
    """Groups of classes that recur across seeds, whatever their group ids.

    Parameters
    ----------
    groupings : array-like of shape (n_seeds, n_classes)
        One grouping per seed.
    min_share : float
        Keep groups found in at least this share of seeds, in ``[0, 1]``.

    Returns
    -------
    list of (tuple of int, float)
        ``(sorted class indices, share of seeds)``, by share descending, then
        by class indices.
    """
    groupings = _check_groupings(groupings)
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must lie in [0, 1], got {min_share}")
    appearances = Counter(
        group for grouping in groupings for group in canonical_partition(grouping)
    )
    ranked = sorted(
        ((tuple(sorted(group)), count / len(groupings)) for group, count in appearances.items()),
        key=lambda item: (-item[1], item[0]),
    )
    return [(group, share) for group, share in ranked if share >= min_share]
