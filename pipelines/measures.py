"""Agreement and stability measures for clusterings.

Small pure functions over label arrays. Two questions are answered here:

* Do two labelings of the same points agree? ``PARTITION_AGREEMENT`` compares two
  clusterings (for example two KMeans seeds); ``CLASS_AGREEMENT`` compares a
  clustering with known classes.
* Is each cluster of a reference clustering real, i.e. does it survive when the
  points are resampled? Hennig's clusterboot Jaccard (:func:`cluster_jaccard`,
  :func:`bootstrap_jaccard`, :func:`jaccard_standard_error`, :func:`jaccard_verdict`),
  by default exactly as ``fpc::clusterboot`` computes it (``tests/test_clusterboot.py``
  replays R's draws and partitions through these functions).

No clusterer is fitted here: callers fit on ``X[indices]`` and pass the labels
back, or hand a ``fit_predict`` callable to :func:`resample_stability`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln
from sklearn.metrics import (
    adjusted_mutual_info_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
)

from pipelines.config import BOOTSTRAP_PROTOCOLS

Measure = Callable[[ArrayLike, ArrayLike], float]


def check_labels(labels: ArrayLike, name: str, n_ids: int | None = None) -> NDArray[np.int64]:
    """Validate one labeling and return it as an int64 array.

    Parameters
    ----------
    labels : array-like of shape (n_points,)
        Integer ids (cluster, class or point ids). Floats are accepted only when
        every value is a finite whole number.
    name : str
        Argument name used in error messages.
    n_ids : int, optional
        When given, every id must lie in ``[0, n_ids)``.

    Returns
    -------
    labels : ndarray of shape (n_points,), dtype int64

    Raises
    ------
    ValueError
        If ``labels`` is not 1-D, is empty, holds NaN/inf, non-integer values or
        a non-numeric dtype, or (with ``n_ids``) an id out of range.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or inf")
        if not (array == np.trunc(array)).all():
            raise ValueError(f"{name} must hold integer ids, got non-integer floats")
    elif array.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}")
    ids = array.astype(np.int64)
    if n_ids is not None and (ids.min() < 0 or ids.max() >= n_ids):
        raise ValueError(
            f"{name} must lie in [0, {n_ids}), got values in [{ids.min()}, {ids.max()}]"
        )
    return ids


def check_label_pair(
    labels_a: ArrayLike,
    labels_b: ArrayLike,
    names: tuple[str, str] = ("labels_a", "labels_b"),
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Validate two labelings of the same points (see :func:`check_labels`).

    Parameters
    ----------
    labels_a, labels_b : array-like of shape (n_points,)
    names : tuple of str
        Argument names used in error messages.

    Returns
    -------
    labels_a, labels_b : ndarray of shape (n_points,), dtype int64
    """
    a = check_labels(labels_a, names[0])
    b = check_labels(labels_b, names[1])
    if a.size != b.size:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {a.size} != {b.size}")
    return a, b


def pair_counts(a: NDArray[np.integer], b: NDArray[np.integer], n_a: int, n_b: int) -> NDArray[np.int64]:
    """[n_a, n_b] counts of the points with id i under ``a`` and j under ``b``, ids already in
    ``[0, n_a)`` and ``[0, n_b)`` (unchecked: the kernel of every count table here; empty
    inputs give zeros, as a batch without known classes must)."""
    cells = np.bincount(a.astype(np.int64) * n_b + b, minlength=n_a * n_b)
    return cells.reshape(n_a, n_b)


def contingency(
    labels_a: ArrayLike, labels_b: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Count the points shared by every pair of clusters.

    Parameters
    ----------
    labels_a, labels_b : array-like of shape (n_points,)

    Returns
    -------
    counts : ndarray of shape (n_ids_a, n_ids_b), dtype int64
        ``counts[i, j]`` is the number of points with ``labels_a == ids_a[i]``
        and ``labels_b == ids_b[j]``.
    ids_a, ids_b : ndarray
        Sorted distinct ids of each labeling (row and column order of ``counts``).
    """
    a, b = check_label_pair(labels_a, labels_b)
    ids_a, rows = np.unique(a, return_inverse=True)
    ids_b, cols = np.unique(b, return_inverse=True)
    return pair_counts(rows, cols, ids_a.size, ids_b.size), ids_a, ids_b


def adjusted_rand_index(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """Adjusted Rand index of two labelings: pair-counting agreement, 0 at chance, 1 when identical."""
    return float(adjusted_rand_score(*check_label_pair(labels_a, labels_b)))


def adjusted_mutual_information(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """Adjusted mutual information of two labelings: 0 at chance, 1 when identical."""
    return float(adjusted_mutual_info_score(*check_label_pair(labels_a, labels_b)))


def normalized_mutual_information(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """Normalised mutual information (arithmetic mean of the entropies).

    Not chance-corrected; kept because it is the customary companion of ACC.
    """
    return float(normalized_mutual_info_score(*check_label_pair(labels_a, labels_b)))


def hungarian_agreement(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """Share of points that agree after the best one-to-one matching of cluster ids.

    Cluster ids are matched by maximum-weight assignment on the contingency
    matrix. With different numbers of clusters the surplus clusters stay
    unmatched and their points count as disagreeing.

    Parameters
    ----------
    labels_a, labels_b : array-like of shape (n_points,)

    Returns
    -------
    float
        In ``[0, 1]``. Its chance level is not 0: for two independent partitions
        into ``k`` equal clusters it is at least ``1 / k``.
    """
    return hungarian_from_table(contingency(labels_a, labels_b)[0])


def clustering_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Clustering accuracy (ACC): :func:`hungarian_agreement` of the cluster labels ``y_pred``
    against the class labels ``y_true``."""
    return hungarian_agreement(*check_label_pair(y_true, y_pred, ("y_true", "y_pred")))


# Agreement between two clusterings of the same points: symmetric, 1 for
# identical partitions whatever the ids.
PARTITION_AGREEMENT: dict[str, Measure] = {
    "ari": adjusted_rand_index,
    "ami": adjusted_mutual_information,
    "hungarian": hungarian_agreement,
}

# Agreement of a clustering with known classes, as reported in the literature.
CLASS_AGREEMENT: dict[str, Measure] = {
    "acc": clustering_accuracy,
    "nmi": normalized_mutual_information,
    "ari": adjusted_rand_index,
}


def class_agreement(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Every measure of ``CLASS_AGREEMENT`` between the classes ``y_true`` and the clusters
    ``y_pred``: ``{"acc": float, "nmi": float, "ari": float}``."""
    y_true, y_pred = check_label_pair(y_true, y_pred, ("y_true", "y_pred"))
    return {name: measure(y_true, y_pred) for name, measure in CLASS_AGREEMENT.items()}


# --- the same measures from a contingency table ---------------------------------------------
# The sweep's assignment pass never holds every row's labels: it counts, per batch, the points
# each pair of clusters shares, and the scores are computed from the summed tables. Rows of a
# table are the first labeling's clusters, columns the second's; empty rows and columns count
# for nothing. Each equals its label-based twin above (tests/test_measures.py checks it).

# Terms of the expected mutual information further than this many standard deviations from the
# hypergeometric mean weigh less than exp(-70) and are left out: 10^7 points stay seconds of work.
EMI_WINDOW_SD = 12.0


def _present(counts: ArrayLike) -> NDArray[np.int64]:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or (counts < 0).any():
        raise ValueError(f"a contingency table must be a 2-D array of counts >= 0, got shape {counts.shape}")
    return counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]


def hungarian_from_table(counts: ArrayLike) -> float:
    """:func:`hungarian_agreement` of the two labelings a contingency table counts."""
    counts = _present(counts)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def ari_from_table(counts: ArrayLike) -> float:
    """:func:`adjusted_rand_index` from a contingency table (scikit-learn's pair-confusion form)."""
    counts = _present(counts)
    n = int(counts.sum())
    squares = int((counts ** 2).sum())
    # Python ints: the products below overflow int64 from about 10^5 points on.
    a_pairs = int(counts.sum(axis=1) @ counts.sum(axis=1)) - squares  # same cluster in a, not b ...
    b_pairs = int(counts.sum(axis=0) @ counts.sum(axis=0)) - squares
    both, neither = squares - n, n * n - a_pairs - b_pairs - squares
    if a_pairs == 0 and b_pairs == 0:
        return 1.0
    return float(2 * (both * neither - a_pairs * b_pairs)
                 / ((both + b_pairs) * (b_pairs + neither) + (both + a_pairs) * (a_pairs + neither)))


def _entropy(sizes: NDArray[np.int64]) -> float:
    share = sizes[sizes > 0] / sizes.sum()
    return float(-(share * np.log(share)).sum())


def _mutual_information(counts: NDArray[np.int64]) -> float:
    n = counts.sum()
    rows, cols = np.nonzero(counts)
    cells = counts[rows, cols].astype(float)
    outer = counts.sum(axis=1)[rows].astype(float) * counts.sum(axis=0)[cols]
    return max(0.0, float((cells / n * (np.log(cells * n) - np.log(outer))).sum()))


def nmi_from_table(counts: ArrayLike) -> float:
    """:func:`normalized_mutual_information` (arithmetic mean) from a contingency table."""
    counts = _present(counts)
    if counts.shape[0] == counts.shape[1] == 1:
        return 1.0
    mutual = _mutual_information(counts)
    if mutual == 0:
        return 0.0
    return mutual / ((_entropy(counts.sum(axis=1)) + _entropy(counts.sum(axis=0))) / 2)


def expected_mutual_information(counts: ArrayLike) -> float:
    """The mutual information two random labelings with these cluster sizes share on average
    (hypergeometric model, Vinh et al. 2010), summed over the window of ``EMI_WINDOW_SD``."""
    counts = _present(counts)
    n = int(counts.sum())
    a, b = np.meshgrid(counts.sum(axis=1), counts.sum(axis=0), indexing="ij")
    a, b = a.ravel().astype(float), b.ravel().astype(float)
    mean = a * b / n
    sd = np.sqrt(a * b * (n - a) * (n - b) / (n * n * max(n - 1, 1)))
    low = np.maximum(np.maximum(1, a + b - n), np.floor(mean - EMI_WINDOW_SD * sd - 2))
    high = np.minimum(np.minimum(a, b), np.ceil(mean + EMI_WINDOW_SD * sd + 2))
    lengths = np.maximum(high - low + 1, 0).astype(np.int64)
    pair = np.repeat(np.arange(a.size), lengths)
    nij = low[pair] + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    ai, bj = a[pair], b[pair]
    log_p = (gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1) + gammaln(n - bj + 1) - gammaln(n + 1)
             - gammaln(nij + 1) - gammaln(ai - nij + 1) - gammaln(bj - nij + 1) - gammaln(n - ai - bj + nij + 1))
    return float((nij / n * (np.log(n * nij) - np.log(ai * bj)) * np.exp(log_p)).sum())


def ami_from_table(counts: ArrayLike) -> float:
    """:func:`adjusted_mutual_information` (arithmetic mean) from a contingency table."""
    counts = _present(counts)
    if counts.shape[0] == counts.shape[1] == 1:
        return 1.0
    expected = expected_mutual_information(counts)
    denominator = (_entropy(counts.sum(axis=1)) + _entropy(counts.sum(axis=0))) / 2 - expected
    eps = np.finfo(float).eps
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    return (_mutual_information(counts) - expected) / denominator


TableMeasure = Callable[[ArrayLike], float]
PARTITION_AGREEMENT_FROM_TABLE: dict[str, TableMeasure] = {
    "ari": ari_from_table, "ami": ami_from_table, "hungarian": hungarian_from_table}
CLASS_AGREEMENT_FROM_TABLE: dict[str, TableMeasure] = {
    "acc": hungarian_from_table, "nmi": nmi_from_table, "ari": ari_from_table}


def class_agreement_from_table(counts: ArrayLike) -> dict[str, float]:
    """:func:`class_agreement` from a class x cluster table."""
    return {name: measure(counts) for name, measure in CLASS_AGREEMENT_FROM_TABLE.items()}


def seed_agreement_from_tables(pair_tables: Sequence[ArrayLike]) -> dict[str, dict[str, float | int]]:
    """:func:`pairwise_seed_agreement_all` from one cluster x cluster table per pair of seeds."""
    if len(pair_tables) == 0:
        raise ValueError("pair_tables is empty: seed agreement needs at least 2 seeds")
    result = {}
    for name, measure in PARTITION_AGREEMENT_FROM_TABLE.items():
        scores = np.array([measure(table) for table in pair_tables])
        result[name] = {"mean": float(scores.mean()), "std": float(scores.std()), "n_pairs": int(scores.size)}
    return result


def pairwise_seed_agreement(labelings: ArrayLike, measure: str = "ari") -> dict[str, float | int]:
    """Agreement between every pair of seeds' labelings of the same points.

    On large ``n`` this mostly measures the clusterer's initialisation; see
    :func:`resample_stability` for stability under resampling of the points.

    Parameters
    ----------
    labelings : array-like of shape (n_seeds, n_points)
        One labeling per seed, ``n_seeds >= 2``.
    measure : str
        A key of ``PARTITION_AGREEMENT``.

    Returns
    -------
    dict
        ``mean`` and ``std`` (population, ddof=0) of the measure over the
        ``n_pairs = n_seeds * (n_seeds - 1) / 2`` seed pairs.
    """
    if measure not in PARTITION_AGREEMENT:
        raise ValueError(
            f"unknown measure {measure!r}; choose one of {sorted(PARTITION_AGREEMENT)}"
        )
    labelings = np.asarray(labelings)
    if labelings.ndim != 2 or labelings.shape[0] < 2:
        raise ValueError(
            f"labelings must have shape (n_seeds >= 2, n_points), got {labelings.shape}"
        )
    score = PARTITION_AGREEMENT[measure]
    scores = np.array([score(a, b) for a, b in itertools.combinations(labelings, 2)])
    return {"mean": float(scores.mean()), "std": float(scores.std()), "n_pairs": int(scores.size)}


def pairwise_seed_agreement_all(labelings: ArrayLike) -> dict[str, dict[str, float | int]]:
    """:func:`pairwise_seed_agreement` for every measure of ``PARTITION_AGREEMENT``.

    Parameters
    ----------
    labelings : array-like of shape (n_seeds, n_points)

    Returns
    -------
    dict
        Measure name -> ``{"mean", "std", "n_pairs"}``.
    """
    return {name: pairwise_seed_agreement(labelings, name) for name in PARTITION_AGREEMENT}


def cross_model_agreement(labelings_by_model: Sequence[ArrayLike], measure: str = "ari") -> dict[str, float | int]:
    """Agreement between partitions of the same points made from different models' features.

    Each model (an autoencoder trained with its own seed) gives one labeling per clusterer seed.
    Every pair of labelings from two *different* models is scored; pairs within a model are
    :func:`pairwise_seed_agreement`'s. High agreement says the features, not the draw of one
    training run, carry the clusters.

    Parameters
    ----------
    labelings_by_model : sequence of array-like of shape (n_seeds, n_points)
        At least two models; the seed counts may differ, the points may not.
    measure : str
        A key of ``PARTITION_AGREEMENT``.

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof=0) and ``min`` over the cross-model pairs, ``n_pairs``, ``n_models``.
    """
    if measure not in PARTITION_AGREEMENT:
        raise ValueError(f"unknown measure {measure!r}; choose one of {sorted(PARTITION_AGREEMENT)}")
    models = [np.atleast_2d(np.asarray(labelings)) for labelings in labelings_by_model]
    if len(models) < 2:
        raise ValueError(f"cross-model agreement needs at least 2 models, got {len(models)}")
    n_points = {labelings.shape[1] for labelings in models}
    if len(n_points) != 1 or any(labelings.ndim != 2 for labelings in models):
        raise ValueError(f"every model's labelings must be (n_seeds, n_points) over the same points, got shapes "
                         f"{[labelings.shape for labelings in models]}")
    score = PARTITION_AGREEMENT[measure]
    scores = np.array([score(a, b) for model_a, model_b in itertools.combinations(models, 2)
                       for a in model_a for b in model_b])
    return {"mean": float(scores.mean()), "std": float(scores.std()), "min": float(scores.min()),
            "n_pairs": int(scores.size), "n_models": len(models)}


def _distinct_resample(
    n_points: int, resample_indices: ArrayLike, resample_labels: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Distinct resampled points and their labels.

    A bootstrap resample repeats points; each point counts once, with the label
    the clusterer gave its first occurrence.
    """
    indices, labels = check_label_pair(
        resample_indices, resample_labels, ("resample_indices", "resample_labels")
    )
    check_labels(indices, "resample_indices", n_ids=n_points)
    points, first = np.unique(indices, return_index=True)
    return points, labels[first]


# How a bootstrap resample is refitted and scored (StabilityConfig.bootstrap):
#   clusterboot  fpc::clusterboot's default (multipleboot=FALSE): the clusterer sees each drawn
#                point once, and a reference cluster with no point in the resample scores 0;
#   duplicates   the clusterer sees the drawn rows with their repeats, and an absent cluster is
#                left out of its mean (NaN): this project's protocol before clusterboot fidelity.
# (The tuple lives in pipelines.config, which must stay light enough for --help.)


def check_protocol(protocol: str) -> None:
    if protocol not in BOOTSTRAP_PROTOCOLS:
        raise ValueError(f"unknown bootstrap protocol {protocol!r}; choose one of {', '.join(BOOTSTRAP_PROTOCOLS)}")


def _best_jaccard(
    reference: NDArray[np.int64], points: NDArray[np.int64], labels: NDArray[np.int64], absent: float = 0.0
) -> NDArray[np.float64]:
    """Each reference cluster's best Jaccard with a resample cluster, on ``points``; ``absent``
    for a cluster with no point there (clusterboot: 0, since |A & B| = 0 for every B)."""
    cluster_ids = np.unique(reference)
    counts, present_ids, _ = contingency(reference[points], labels)
    union = counts.sum(axis=1, keepdims=True) + counts.sum(axis=0, keepdims=True) - counts
    best = np.full(cluster_ids.size, absent, dtype=float)
    best[np.searchsorted(cluster_ids, present_ids)] = (counts / union).max(axis=1)
    return best


def cluster_jaccard(
    reference_labels: ArrayLike, resample_indices: ArrayLike, resample_labels: ArrayLike, absent: float = 0.0
) -> NDArray[np.float64]:
    """Per-cluster Jaccard stability for one resample (Hennig's clusterboot).

    Each reference cluster, restricted to the distinct resampled points, is
    compared with every cluster the clusterer found on the resample; its score
    is the best Jaccard similarity ``|A & B| / |A | B|``.

    Parameters
    ----------
    reference_labels : array-like of shape (n_points,)
        Clustering of all points.
    resample_indices : array-like of shape (n_resampled,)
        Indices into the original points; may repeat (bootstrap).
    resample_labels : array-like of shape (n_resampled,)
        Labels the clusterer gave ``X[resample_indices]``.
    absent : float
        The score of a cluster with no point in the resample: 0 as in
        clusterboot (the default), NaN to leave it out of the mean.

    Returns
    -------
    ndarray of shape (k,)
        One value per reference cluster, in the order of
        ``np.unique(reference_labels)``.

    >>> cluster_jaccard([0, 0, 1, 1, 2], [0, 1, 2, 3], [5, 5, 6, 6]).tolist()
    [1.0, 1.0, 0.0]
    """
    reference = check_labels(reference_labels, "reference_labels")
    points, labels = _distinct_resample(reference.size, resample_indices, resample_labels)
    return _best_jaccard(reference, points, labels, absent)


def bootstrap_jaccard(
    reference_labels: ArrayLike, resamples: Sequence[tuple[ArrayLike, ArrayLike]], absent: float = 0.0
) -> NDArray[np.float64]:
    """:func:`cluster_jaccard` for many resamples (bootstrap or subsample alike).

    Parameters
    ----------
    reference_labels : array-like of shape (n_points,)
    resamples : sequence of (indices, labels)
        One pair per resample, as for :func:`cluster_jaccard`.
    absent : float
        As for :func:`cluster_jaccard`.

    Returns
    -------
    ndarray of shape (n_resamples, k)
    """
    if len(resamples) == 0:
        raise ValueError("resamples is empty")
    return np.vstack(
        [cluster_jaccard(reference_labels, indices, labels, absent) for indices, labels in resamples]
    )


def mean_jaccard_per_cluster(jaccard: ArrayLike) -> NDArray[np.float64]:
    """Mean Jaccard of each cluster over the resamples in which it was present.

    Parameters
    ----------
    jaccard : array-like of shape (n_resamples, k)
        As returned by :func:`bootstrap_jaccard`; NaN marks an absent cluster.

    Returns
    -------
    ndarray of shape (k,)
        NaN for a cluster absent from every resample.
    """
    jaccard = np.asarray(jaccard, dtype=float)
    present = ~np.isnan(jaccard)
    n_present = present.sum(axis=0)
    total = np.where(present, jaccard, 0.0).sum(axis=0)
    return np.divide(total, n_present, out=np.full(total.shape, np.nan), where=n_present > 0)


def jaccard_standard_error(jaccard: ArrayLike) -> NDArray[np.float64]:
    """Monte-Carlo standard error of :func:`mean_jaccard_per_cluster`: the sample standard
    deviation (ddof=1) over the resamples a cluster was scored in, over the square root of
    their number. NaN with fewer than 2 such resamples.

    >>> jaccard_standard_error([[1.0, 0.5], [0.0, 0.5], [0.5, np.nan]]).round(4).tolist()
    [0.2887, 0.0]
    """
    jaccard = np.asarray(jaccard, dtype=float)
    n_present = (~np.isnan(jaccard)).sum(axis=0)
    se = np.full(jaccard.shape[1], np.nan)
    for column in np.flatnonzero(n_present >= 2):
        scored = jaccard[~np.isnan(jaccard[:, column]), column]
        se[column] = scored.std(ddof=1) / np.sqrt(scored.size)
    return se


def jaccard_verdict(mean_jaccard: float) -> str:
    """Hennig's reading of a cluster's mean resampling Jaccard.

    Parameters
    ----------
    mean_jaccard : float
        In ``[0, 1]``.

    Returns
    -------
    str
        ``"dissolved"`` (<= 0.5), ``"not to trust"`` (0.5 < j < 0.6),
        ``"doubtful"`` (0.6 <= j < 0.75), ``"stable"`` (0.75 <= j < 0.85) or
        ``"highly stable"`` (>= 0.85).
    """
    if not 0.0 <= mean_jaccard <= 1.0:  # also refuses NaN
        raise ValueError(f"mean_jaccard must lie in [0, 1], got {mean_jaccard}")
    if mean_jaccard <= 0.5:
        return "dissolved"
    if mean_jaccard < 0.6:
        return "not to trust"
    if mean_jaccard < 0.75:
        return "doubtful"
    if mean_jaccard < 0.85:
        return "stable"
    return "highly stable"


def _check_resample_counts(n: int, n_resamples: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> list[NDArray[np.int64]]:
    """``n_resamples`` bootstrap resamples of ``n`` points: ``n`` indices drawn with replacement,
    sorted (order does not matter to the measures), reproducible from ``seed``."""
    _check_resample_counts(n, n_resamples)
    rng = np.random.default_rng(seed)
    return [np.sort(rng.integers(0, n, size=n)) for _ in range(n_resamples)]


def subsample_indices(
    n: int, n_resamples: int, seed: int, fraction: float = 0.8
) -> list[NDArray[np.int64]]:
    """``n_resamples`` subsamples of ``n`` points: ``round(fraction * n)`` distinct indices
    (``fraction`` in (0, 1]), sorted, reproducible from ``seed``."""
    _check_resample_counts(n, n_resamples)
    size = round(fraction * n)
    if not 0.0 < fraction <= 1.0 or size < 1:
        raise ValueError(f"fraction must lie in (0, 1] and keep at least one point, got {fraction}")
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(n_resamples)]


def distinct_in_order(indices: ArrayLike) -> NDArray[np.int64]:
    """The distinct values of ``indices`` in the order of their first occurrence (R's ``unique``).

    >>> distinct_in_order([3, 1, 3, 0, 1]).tolist()
    [3, 1, 0]
    """
    indices = np.asarray(indices, dtype=np.int64)
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)]


def refit_resample(
    X: np.ndarray, fit_predict: Callable[[np.ndarray, int], ArrayLike], indices: NDArray[np.int64],
    resample_no: int, protocol: str,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(distinct points, their labels) of one resample refitted under ``protocol``: the
    clusterer sees each drawn point once (clusterboot) or the drawn rows with repeats."""
    if protocol == "clusterboot":
        points = distinct_in_order(indices)
        return points, check_labels(fit_predict(X[points], resample_no), "fit_predict's labels")
    return _distinct_resample(len(X), indices, fit_predict(X[indices], resample_no))


def resample_stability(
    X: ArrayLike,
    fit_predict: Callable[[np.ndarray, int], ArrayLike],
    reference_labels: ArrayLike,
    indices_list: Sequence[ArrayLike],
    protocol: str = "clusterboot",
) -> dict[str, object]:
    """Refit the clusterer on resamples of the points and score the reference clusters.

    Seed-only stability (:func:`pairwise_seed_agreement`) on large ``n`` mostly
    measures the clusterer's initialisation; resampling perturbs the data itself,
    which tests whether a cluster is a property of the distribution, not of this sample.

    ``X`` (n_points, ...): the points, rows selected with ``X[indices]``;
    ``fit_predict(X_resample, resample_no) -> labels``, ``resample_no`` (0, 1, ...)
    seeding its own randomness; ``reference_labels`` (n_points,): the clustering of
    all points; ``indices_list``: from :func:`bootstrap_indices` or :func:`subsample_indices`;
    ``protocol``: one of ``BOOTSTRAP_PROTOCOLS`` (subsamples have no repeats, so for them
    only the scoring of an absent cluster differs).

    Returns
    -------
    dict
        ``cluster_ids`` (k,): sorted reference ids, the column order below;
        ``jaccard`` (n_resamples, k): per-resample best Jaccard (absent: 0, or NaN
        under ``duplicates``);
        ``mean_jaccard`` (k,): see :func:`mean_jaccard_per_cluster`;
        ``se_jaccard`` (k,): see :func:`jaccard_standard_error`;
        ``ari_mean``, ``ari_std``: ARI between the reference labels and the
        resample labels on the distinct resampled points (for subsamples, the
        shared points), population std;
        ``n_resamples``: int.
    """
    check_protocol(protocol)
    reference = check_labels(reference_labels, "reference_labels")
    X = np.asarray(X)
    if len(X) != reference.size:
        raise ValueError(
            f"X and reference_labels differ in length: {len(X)} != {reference.size}"
        )
    if len(indices_list) == 0:
        raise ValueError("indices_list is empty")
    absent = 0.0 if protocol == "clusterboot" else np.nan
    jaccard, ari = [], []
    for resample_no, resample_indices in enumerate(indices_list):
        # Checked before indexing: negative indices would silently wrap around.
        indices = check_labels(resample_indices, "resample_indices", n_ids=reference.size)
        points, labels = refit_resample(X, fit_predict, indices, resample_no, protocol)
        jaccard.append(_best_jaccard(reference, points, labels, absent))
        ari.append(adjusted_rand_index(reference[points], labels))
    jaccard = np.vstack(jaccard)
    return {
        "cluster_ids": np.unique(reference),
        "jaccard": jaccard,
        "mean_jaccard": mean_jaccard_per_cluster(jaccard),
        "se_jaccard": jaccard_standard_error(jaccard),
        "ari_mean": float(np.mean(ari)),
        "ari_std": float(np.std(ari)),
        "n_resamples": len(ari),
    }
