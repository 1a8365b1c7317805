"""Feature transforms and clusterers (pure functions, no Ray), and the cross-model agreement."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from pipelines.config import CLUSTERERS, StabilityConfig, parse_k, parse_transform
from pipelines.measures import adjusted_rand_index, cross_model_agreement
from pipelines.transforms import (
    apply_transform,
    consensus_partition,
    fit_clusters,
    fit_seeds,
    fit_transform,
    l2_normalize,
    umap_neighbors_within,
    within_cluster_sum_of_squares,
)


def standardize(X):
    return apply_transform(X, ["standardize"])


def pca(X, n_components, whiten, seed):
    return apply_transform(X, ["pca-whiten" if whiten else "pca"], pca_components=n_components, seed=seed)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, n_features=8, centers=3, cluster_std=1.0, random_state=0)
    return X.astype(np.float32), y


def test_a_transform_is_a_chain_of_known_steps():
    assert parse_transform("none") == [] and parse_transform("") == []
    assert parse_transform("L2, pca-whiten,umap") == ["l2", "pca-whiten", "umap"]
    with pytest.raises(ValueError, match="unknown step 'tsne'"):
        parse_transform("l2,tsne")


@pytest.mark.parametrize(
    "options, message",
    [({"transform": "pca,foo"}, "unknown step 'foo'"), ({"clusterer": "dbscan"}, "clusterer must be one of"),
     ({"pca_components": 0}, "pca_components must be >= 1"), ({"umap_neighbors": 1}, "umap_neighbors must be >= 2"),
     ({"gmm_covariance": "banded"}, "gmm_covariance must be one of")],
)
def test_bad_transform_or_clusterer_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        StabilityConfig(**options)


def test_standardize_gives_zero_mean_unit_variance_and_leaves_constant_features_at_zero():
    X = np.column_stack([np.arange(10.0), 5 * np.arange(10.0) + 3, np.full(10, 7.0)])
    Z = standardize(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(Z.std(axis=0), [1, 1, 0], atol=1e-6)
    assert np.isfinite(Z).all()


def test_l2_normalize_gives_unit_rows_and_keeps_a_zero_row():
    Z = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(Z, [[0.6, 0.8], [0, 0], [-1, 0]])


def test_pca_keeps_the_leading_components_and_whitening_gives_unit_variance(blobs):
    X, _ = blobs
    Z = pca(X, 3, whiten=False, seed=0)
    W = pca(X, 3, whiten=True, seed=0)
    assert Z.shape == W.shape == (300, 3)
    assert Z.var(axis=0)[0] > Z.var(axis=0)[2]
    np.testing.assert_allclose(W.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    assert pca(X, 50, whiten=False, seed=0).shape == (300, 8)  # no more components than features


def test_umap_embeds_deterministically_and_keeps_the_blobs_apart(blobs):
    X, y = blobs
    options = dict(umap_components=2, umap_neighbors=15, seed=0)
    once, again = apply_transform(X, ["umap"], **options), apply_transform(X, ["umap"], **options)
    assert once.shape == (300, 2) and once.dtype == np.float32
    np.testing.assert_array_equal(once, again)
    assert adjusted_rand_index(y, fit_clusters(once, 3, seed=0)) == 1.0


def test_umap_needs_more_rows_than_neighbours():
    with pytest.raises(ValueError, match="umap_neighbors=20 needs more than 20 rows"):
        apply_transform(np.zeros((10, 3)), ["umap"])


def test_umap_takes_no_more_neighbours_than_a_cluster_holds():
    """Ten faces a person at k = 40: a graph of 20 neighbours would join each person to another."""
    from pipelines.sweep_scores import transform_points

    assert umap_neighbors_within(400, 40) == 10 and umap_neighbors_within(70_000, 10) == 20
    assert umap_neighbors_within(30, 20) == 2 and umap_neighbors_within(400, 40, most=5) == 5
    X = np.random.default_rng(0).normal(size=(400, 6)).astype(np.float32)
    for k, neighbours in (("2-10,40", 10), ("2-10", 20)):
        fitted, _ = transform_points(X, StabilityConfig(k=k, transform="umap", umap_components=2))
        assert fitted.steps[0][1].n_neighbors == neighbours


@pytest.mark.parametrize("clusterer", CLUSTERERS)
def test_every_clusterer_finds_the_planted_blobs_and_repeats_with_a_seed(blobs, clusterer):
    X, y = blobs
    labels = fit_clusters(X, 3, seed=4, clusterer=clusterer)
    assert adjusted_rand_index(y, labels) == 1.0
    np.testing.assert_array_equal(labels, fit_clusters(X, 3, seed=4, clusterer=clusterer))


def test_a_consensus_keeps_what_most_partitions_agree_on():
    truth = np.repeat([0, 1, 2], 20)
    relabelled = np.array([2, 0, 1])[truth]
    one_wrong = truth.copy()
    one_wrong[:5] = 1  # five points of cluster 0 moved in this partition only
    consensus = consensus_partition([one_wrong, truth, relabelled], 3, seed=0)
    assert adjusted_rand_index(truth, consensus) == 1.0


def test_a_consensus_of_kmeans_repeats_better_than_one_kmeans_where_kmeans_wavers():
    # 12 overlapping blobs cut into 6 clusters: single KMeans fits disagree with each other
    X, _ = make_blobs(n_samples=1200, n_features=2, centers=12, cluster_std=1.5, random_state=3)

    def mean_pairwise_ari(clusterer):
        labels = [fit_clusters(X, 6, seed, clusterer) for seed in range(6)]
        return np.mean([adjusted_rand_index(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]])

    assert mean_pairwise_ari("kmeans-consensus") > mean_pairwise_ari("kmeans") + 0.05


def test_within_cluster_sum_of_squares_is_kmeans_inertia(blobs):
    X, _ = blobs
    fitted = KMeans(n_clusters=4, n_init=1, random_state=0).fit(X)
    assert within_cluster_sum_of_squares(X, fitted.labels_) == pytest.approx(fitted.inertia_, rel=1e-4)


def test_cross_model_agreement_is_one_for_the_same_partitions_relabelled_and_near_zero_for_random():
    rng = np.random.default_rng(0)
    partition = rng.integers(0, 4, size=2000)
    relabelled = (partition + 1) % 4
    same = cross_model_agreement([np.stack([partition, partition]), relabelled[None]])
    assert same == {"mean": 1.0, "std": 0.0, "min": 1.0, "n_pairs": 2, "n_models": 2}
    random = cross_model_agreement([rng.integers(0, 4, size=(3, 2000)) for _ in range(3)])
    assert random["n_pairs"] == 27 and abs(random["mean"]) < 0.01


def test_cross_model_agreement_refuses_one_model_or_different_points():
    with pytest.raises(ValueError, match="at least 2 models"):
        cross_model_agreement([np.zeros((2, 5), dtype=int)])
    with pytest.raises(ValueError, match="same points"):
        cross_model_agreement([np.zeros((2, 5), dtype=int), np.zeros((2, 6), dtype=int)])


def test_k_takes_ranges_lists_and_both():
    assert parse_k("2-4") == [2, 3, 4] and parse_k("10,2,4") == [2, 4, 10]
    assert parse_k("2-4, 10,40") == [2, 3, 4, 10, 40]
    for bad in ("", "2-", "two", "5-3"):
        with pytest.raises(ValueError, match="k "):
            parse_k(bad)


@pytest.mark.parametrize("steps", [["standardize"], ["l2"], ["pca"], ["standardize", "pca-whiten"], ["l2", "umap"]])
def test_a_fitted_transform_applies_to_new_rows_as_to_the_rows_it_was_fitted_on(blobs, steps):
    # The sweep fits on a sample and applies the chain to every row in the assignment pass.
    X, _ = blobs
    fitted, points = fit_transform(X[:200], steps, pca_components=3, umap_components=2, umap_neighbors=15)
    again = fitted.apply(X)
    assert again.shape == (300, points.shape[1]) and again.dtype == np.float32
    if "umap" in steps:  # UMAP's transform places points near, not at, their fitted embedding
        assert adjusted_rand_index(fit_clusters(points, 3, 0), fit_clusters(again[:200], 3, 0)) == 1.0
    else:
        np.testing.assert_allclose(again[:200], points, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("clusterer", CLUSTERERS)
def test_fitted_clusters_predict_the_labels_of_their_fit(blobs, clusterer):
    X, _ = blobs
    models, labels = fit_seeds(X, 3, seeds=2, clusterer=clusterer, gmm_covariance="diag")
    assert models.centers.shape == (2, 3, 8) and labels.shape == (2, 300)
    for seed in range(2):
        np.testing.assert_array_equal(models.predict(seed, X), labels[seed])
        np.testing.assert_array_equal(labels[seed], fit_clusters(X, 3, seed, clusterer, "diag"))
