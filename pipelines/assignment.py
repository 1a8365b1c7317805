"""The sweep's assignment pass as plain numpy: every row to every fitted model's clusters, and the
count tables every score is computed from. No Ray: the stability stage maps :func:`assign_batch`
over Ray Data batches of the feature table, or over the points in memory when the sample is the
whole table, and sums the batches' :class:`PassStats`.

Which rows the models are fitted on is a filter, not a shuffle: :func:`sample_key` hashes each id
to [0, 1) and a row is in the sample when its key is below the sample's share of the table, so the
same ids give the same sample whatever the order or the partitioning of the files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipelines.measures import pair_counts
from pipelines.transforms import FittedClusters, nearest_center

SAMPLE_SALT = np.uint64(0x5EEDF00D)


def sample_key(ids: ArrayLike) -> NDArray[np.float64]:
    """A uniform number in [0, 1) per id (splitmix64 of the id), the same on every machine.

    >>> sample_key([0, 1, 2]).round(3).tolist()
    [0.77, 0.724, 0.324]
    """
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + SAMPLE_SALT
    with np.errstate(over="ignore"):
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sample_share(n_rows: int, sample_size: int) -> float:
    """The share of the rows the sample keeps: all of them when the table is no larger."""
    return 1.0 if n_rows <= sample_size else sample_size / n_rows


def in_sample(ids: ArrayLike, share: float) -> NDArray[np.bool_]:
    return sample_key(ids) < share


@dataclass
class KStats:
    """One k's sums over the rows assigned so far; seed pairs in ``itertools.combinations`` order."""

    counts: NDArray[np.int64]  # [seeds, k] points per cluster
    sums: NDArray[np.float64]  # [seeds, k, d] their sum, and below their sum of squared norms
    squares: NDArray[np.float64]  # [seeds, k]
    class_counts: NDArray[np.int64]  # [seeds, classes, k], points of known class
    raw_sums: NDArray[np.float64]  # [k, raw d] seed 0: the sum of the table's own features (not transformed)
    pair_counts: NDArray[np.int64]  # [seed pairs, k, k]
    nearest_distance: NDArray[np.float64]  # [k, m] seed 0: the m points nearest each centre
    nearest_id: NDArray[np.int64]  # [k, m], -1 where a cluster has fewer than m points

    def merge(self, other: KStats) -> KStats:
        distance = np.concatenate([self.nearest_distance, other.nearest_distance], axis=1)
        ids = np.concatenate([self.nearest_id, other.nearest_id], axis=1)
        keep = np.argsort(distance, axis=1, kind="stable")[:, :self.nearest_id.shape[1]]
        return KStats(self.counts + other.counts, self.sums + other.sums, self.squares + other.squares,
                      self.class_counts + other.class_counts, self.raw_sums + other.raw_sums,
                      self.pair_counts + other.pair_counts,
                      np.take_along_axis(distance, keep, 1), np.take_along_axis(ids, keep, 1))

    def within_cluster_sum_of_squares(self) -> NDArray[np.float64]:
        """Per seed, the squared distances of the points to their cluster's mean, summed (exact:
        sum |x|^2 - |sum x|^2 / n per cluster, in float64)."""
        n = np.maximum(self.counts, 1)
        return (self.squares - (self.sums ** 2).sum(axis=2) / n).sum(axis=1)


@dataclass
class PassStats:
    """What the assignment pass sums: per k its :class:`KStats`, and per class the number and the
    sum of the raw features (the class means the re-clustering's centroid method groups)."""

    rows: int
    class_sizes: NDArray[np.int64]  # [classes]
    class_sums: NDArray[np.float64]  # [classes, raw d]
    per_k: dict[int, KStats] = field(default_factory=dict)

    def merge(self, other: PassStats) -> PassStats:
        return PassStats(self.rows + other.rows, self.class_sizes + other.class_sizes,
                         self.class_sums + other.class_sums,
                         {k: stats.merge(other.per_k[k]) for k, stats in self.per_k.items()})


def k_stats(points: np.ndarray, raw: np.ndarray, labels: np.ndarray, distance: np.ndarray, ids: np.ndarray,
            classes: np.ndarray, n_classes: int, k: int, nearest: int) -> KStats:
    """The sums of one batch for one k: ``labels`` [seeds, b], ``distance`` [b] of seed 0."""
    points64 = points.astype(np.float64)
    norms = (points64 ** 2).sum(axis=1)
    onehot = np.zeros((len(points), k))
    sums, counts, squares = [], [], []
    for seed_labels in labels:
        onehot[:] = 0
        onehot[np.arange(len(points)), seed_labels] = 1
        sums.append(onehot.T @ points64)
        counts.append(np.bincount(seed_labels, minlength=k))
        squares.append(np.bincount(seed_labels, weights=norms, minlength=k))
    known = classes >= 0
    class_counts = np.stack([pair_counts(classes[known], seed_labels[known], n_classes, k) for seed_labels in labels])
    pairs = [pair_counts(a, b, k, k) for a, b in itertools.combinations(labels, 2)]
    nearest_distance, nearest_id = np.full((k, nearest), np.inf), np.full((k, nearest), -1, dtype=np.int64)
    for cluster in range(k):
        members = np.flatnonzero(labels[0] == cluster)
        chosen = members[np.argsort(distance[members], kind="stable")[:nearest]]
        nearest_distance[cluster, :len(chosen)], nearest_id[cluster, :len(chosen)] = distance[chosen], ids[chosen]
    onehot[:] = 0
    onehot[np.arange(len(points)), labels[0]] = 1
    raw_sums = sums[0] if raw is points else onehot.T @ raw.astype(np.float64)
    return KStats(np.stack(counts), np.stack(sums), np.stack(squares), class_counts, raw_sums,
                  np.stack(pairs) if pairs else np.zeros((0, k, k), dtype=np.int64), nearest_distance, nearest_id)


def assign_batch(points: np.ndarray, raw: np.ndarray, ids: np.ndarray, classes: np.ndarray,
                 models: dict[int, FittedClusters], n_classes: int,
                 nearest: int) -> tuple[dict[int, NDArray[np.int32]], PassStats]:
    """Assign one batch: ``points`` [b, d] (transformed), ``raw`` [b, D] (the table's features),
    ``classes`` [b] (-1 where unknown). Returns per k the labels [seeds, b] and the batch's sums."""
    labels, per_k = {}, {}
    for k, fitted in models.items():
        seed0, distance = (nearest_center(points, fitted.centers[0]) if fitted.by_nearest_center
                           else (fitted.predict(0, points), None))
        labels[k] = np.vstack([seed0] + [fitted.predict(seed, points) for seed in range(1, fitted.seeds)])
        if distance is None:  # a mixture's prototypes: the points nearest its component's mean
            distance = ((points - fitted.centers[0][seed0]) ** 2).sum(axis=1).astype(np.float64)
        per_k[k] = k_stats(points, raw, labels[k], distance, ids, classes, n_classes, k, nearest)
    known = classes >= 0
    class_onehot = np.zeros((len(points), n_classes))
    class_onehot[np.flatnonzero(known), classes[known]] = 1
    class_sums = class_onehot.T @ raw.astype(np.float64)
    stats = PassStats(len(points), np.bincount(classes[known], minlength=n_classes), class_sums, per_k)
    return labels, stats


def assign_points(points: np.ndarray, raw: np.ndarray, ids: np.ndarray, classes: np.ndarray,
                  models: dict[int, FittedClusters], n_classes: int, nearest: int,
                  batch_rows: int = 65_536) -> tuple[dict[int, NDArray[np.int32]], PassStats]:
    """:func:`assign_batch` over points in memory, batch by batch: per k the labels [seeds, n],
    and the sums of every batch."""
    labels: dict[int, list] = {k: [] for k in models}
    total = None
    for start in range(0, len(points), batch_rows):
        rows = slice(start, start + batch_rows)
        batch_labels, stats = assign_batch(points[rows], raw[rows], ids[rows], classes[rows], models, n_classes,
                                           nearest)
        total = stats if total is None else total.merge(stats)
        for k, values in batch_labels.items():
            labels[k].append(values)
    return {k: np.hstack(values) for k, values in labels.items()}, total
