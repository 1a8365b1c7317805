"""The assignment pass's maths (pure numpy): the sample key, and the sums every score comes from,
which must not depend on how the rows are cut into batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from pipelines.assignment import assign_points, in_sample, sample_key, sample_share
from pipelines.measures import contingency
from pipelines.transforms import fit_seeds, within_cluster_sum_of_squares

K, SEEDS, NEAREST = 3, 3, 4


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=500, n_features=5, centers=3, cluster_std=2.5, random_state=1)
    y[::7] = -1  # some rows without a class
    models, labels = fit_seeds(X.astype(np.float32), K, SEEDS)
    return X.astype(np.float32), y, models, labels


def test_the_sample_is_a_filter_on_ids_whatever_their_order():
    ids = np.arange(100_000)
    kept = in_sample(ids, 0.1)
    assert 0.097 < kept.mean() < 0.103  # the share, up to sampling noise
    shuffled = np.random.default_rng(0).permutation(ids)
    assert set(shuffled[in_sample(shuffled, 0.1)]) == set(ids[kept])
    assert in_sample(ids, sample_share(100_000, 100_000)).all()  # a small table is its own sample
    assert sample_key(ids).min() >= 0 and sample_key(ids).max() < 1


def test_the_pass_sums_give_what_the_labels_give(blobs):
    X, y, models, fitted = blobs
    ids = np.arange(len(X)) * 3 + 10
    labels, stats = assign_points(X, X, ids, y, {K: models}, 3, NEAREST, batch_rows=64)
    k_stats = stats.per_k[K]
    np.testing.assert_array_equal(labels[K], fitted)  # the fits' own labels
    np.testing.assert_array_equal(k_stats.counts, [np.bincount(seed, minlength=K) for seed in fitted])
    np.testing.assert_allclose(k_stats.within_cluster_sum_of_squares(),
                               [within_cluster_sum_of_squares(X, seed) for seed in fitted], rtol=1e-9)
    known = y >= 0
    for seed in range(SEEDS):
        np.testing.assert_array_equal(k_stats.class_counts[seed], contingency(y[known], fitted[seed][known])[0])
    for table, (a, b) in zip(k_stats.pair_counts, itertools.combinations(fitted, 2)):
        np.testing.assert_array_equal(table, contingency(a, b)[0])
    np.testing.assert_allclose(k_stats.raw_sums, [X[fitted[0] == c].sum(axis=0) for c in range(K)], rtol=1e-6)
    for cluster in range(K):  # the ids nearest each centre of seed 0, nearest first
        members = np.flatnonzero(fitted[0] == cluster)
        distance = ((X[members] - models.centers[0][cluster]) ** 2).sum(axis=1)
        np.testing.assert_array_equal(k_stats.nearest_id[cluster], ids[members[np.argsort(distance)[:NEAREST]]])
    assert stats.rows == len(X) and stats.class_sizes.tolist() == np.bincount(y[known]).tolist()


def test_the_sums_do_not_depend_on_the_batches(blobs):
    X, y, models, _ = blobs
    ids = np.arange(len(X))
    _, whole = assign_points(X, X, ids, y, {K: models}, 3, NEAREST)
    _, cut = assign_points(X, X, ids, y, {K: models}, 3, NEAREST, batch_rows=37)
    for name in ("counts", "class_counts", "pair_counts", "nearest_id"):
        np.testing.assert_array_equal(getattr(cut.per_k[K], name), getattr(whole.per_k[K], name))
    np.testing.assert_allclose(cut.per_k[K].sums, whole.per_k[K].sums, rtol=1e-12)
    np.testing.assert_allclose(cut.class_sums, whole.class_sums, rtol=1e-12)
