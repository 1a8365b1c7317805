"""Properties every agreement measure must have, plus known answers.

In the spirit of scikit-learn's metrics/cluster/tests/test_common.py: the
property tests run over every registered measure, so a new entry in a registry
is tested without writing a test for it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from pipelines.measures import (
    pair_counts,
    CLASS_AGREEMENT,
    CLASS_AGREEMENT_FROM_TABLE,
    PARTITION_AGREEMENT_FROM_TABLE,
    adjusted_mutual_information,
    ami_from_table,
    ari_from_table,
    seed_agreement_from_tables,
    PARTITION_AGREEMENT,
    bootstrap_indices,
    bootstrap_jaccard,
    class_agreement,
    cluster_jaccard,
    clustering_accuracy,
    contingency,
    distinct_in_order,
    hungarian_agreement,
    jaccard_standard_error,
    jaccard_verdict,
    mean_jaccard_per_cluster,
    pairwise_seed_agreement,
    pairwise_seed_agreement_all,
    resample_stability,
    subsample_indices,
)

ALL_MEASURES = {
    **{f"partition/{name}": measure for name, measure in PARTITION_AGREEMENT.items()},
    **{f"class/{name}": measure for name, measure in CLASS_AGREEMENT.items()},
}
# Chance-corrected measures: 0 in expectation for independent partitions.
CHANCE_ZERO = ["partition/ari", "partition/ami", "class/ari"]
# Best-matching measures: chance level is at least 1 / k, not 0.
MATCHING = ["partition/hungarian", "class/acc"]

LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 0, 2])
OTHER_LABELS = np.array([1, 1, 0, 0, 2, 2, 2, 3, 0, 3, 1, 2])


@pytest.fixture(params=sorted(ALL_MEASURES))
def measure(request):
    return ALL_MEASURES[request.param]


def test_identical_partitions_score_one(measure):
    assert measure(LABELS, LABELS) == pytest.approx(1.0)


def test_relabelled_partitions_score_one(measure):
    permuted_ids = np.array([7, 3, 9, 5])[LABELS]
    assert measure(LABELS, permuted_ids) == pytest.approx(1.0)


def test_symmetric(measure):
    assert measure(LABELS, OTHER_LABELS) == pytest.approx(measure(OTHER_LABELS, LABELS))


def test_returns_plain_float(measure):
    assert type(measure(LABELS, OTHER_LABELS)) is float


def test_accepts_integer_valued_floats(measure):
    assert measure(LABELS.astype(float), OTHER_LABELS) == pytest.approx(
        measure(LABELS, OTHER_LABELS)
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_refuses_non_finite(measure, bad):
    broken = LABELS.astype(float)
    broken[3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        measure(broken, OTHER_LABELS)
    with pytest.raises(ValueError, match="NaN or inf"):
        measure(OTHER_LABELS, broken)


@pytest.mark.parametrize(
    "labels, message",
    [
        (LABELS[:-1], "differ in length"),
        (LABELS + 0.5, "integer"),
        (LABELS.astype(str), "integer"),
        (LABELS.reshape(3, 4), "1-D"),
        (np.array([], dtype=int), "empty"),
    ],
    ids=["length", "fractional", "strings", "2-D", "empty"],
)
def test_refuses_invalid_labels(measure, labels, message):
    with pytest.raises(ValueError, match=message):
        measure(labels, OTHER_LABELS)


@pytest.mark.parametrize("name", CHANCE_ZERO)
def test_independent_partitions_score_about_zero(name):
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, size=(2, 2000))
    assert abs(ALL_MEASURES[name](a, b)) < 0.05


@pytest.mark.parametrize("name", MATCHING)
@pytest.mark.parametrize("k", [2, 4, 8])
def test_matching_chance_level_is_one_over_k(name, k):
    # The best matching is at least the mean over all matchings, which is 1/k;
    # fluctuations push it only slightly above.
    rng = np.random.default_rng(k)
    a, b = rng.integers(0, k, size=(2, 2000))
    assert 1 / k <= ALL_MEASURES[name](a, b) < 1 / k + 0.05


def test_error_names_the_argument():
    with pytest.raises(ValueError, match="labels_b contains NaN"):
        hungarian_agreement([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="y_true contains NaN"):
        clustering_accuracy([0.0, np.nan], [0, 1])


def test_contingency_counts_and_ids():
    counts, ids_a, ids_b = contingency([5, 5, 2, 2, 2], [1, 0, 0, 0, 9])
    np.testing.assert_array_equal(ids_a, [2, 5])
    np.testing.assert_array_equal(ids_b, [0, 1, 9])
    np.testing.assert_array_equal(counts, [[2, 0, 1], [1, 1, 0]])
    assert counts.dtype == np.int64


def test_pair_counts_of_a_batch_without_points_are_zeros_of_the_full_shape():
    np.testing.assert_array_equal(pair_counts(np.array([1, 0, 1]), np.array([2, 2, 0]), 2, 3), [[0, 0, 1], [1, 0, 1]])
    empty = pair_counts(np.array([], np.int64), np.array([], np.int64), 10, 4)
    assert empty.shape == (10, 4) and empty.sum() == 0


def test_hungarian_known_answer():
    # Matching 0<->1 and 1<->0 makes 6 of the 8 points agree.
    assert hungarian_agreement([0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 1]) == 0.75


def test_hungarian_with_different_numbers_of_clusters():
    # Cluster 1 of the first labeling has no partner; its two points disagree.
    assert hungarian_agreement([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1]) == pytest.approx(4 / 6)


def test_class_agreement_is_the_registry():
    y_true, y_pred = LABELS, OTHER_LABELS
    assert class_agreement(y_true, y_pred) == {
        name: measure(y_true, y_pred) for name, measure in CLASS_AGREEMENT.items()
    }


def test_pairwise_seed_agreement():
    base = np.array([0, 0, 1, 1, 2, 2])
    labelings = np.vstack([base, (base + 1) % 3, [0, 1, 0, 1, 0, 1]])
    result = pairwise_seed_agreement(labelings, "hungarian")
    assert result["n_pairs"] == 3
    # Pairs: (base, relabelled base) = 1; with the alternating labeling every
    # cell of the contingency matrix is 1, so only 2 of the 6 points can agree.
    assert result["mean"] == pytest.approx((1 + 2 / 6 + 2 / 6) / 3)
    assert result["std"] > 0
    assert pairwise_seed_agreement(np.vstack([base, base, base])) == {
        "mean": 1.0,
        "std": 0.0,
        "n_pairs": 3,
    }
    assert set(pairwise_seed_agreement_all(labelings)) == set(PARTITION_AGREEMENT)


@pytest.mark.parametrize(
    "labelings, measure, message",
    [
        (np.zeros((1, 5), dtype=int), "ari", "n_seeds >= 2"),
        (np.zeros((2, 5), dtype=int), "rand", "unknown measure"),
    ],
)
def test_pairwise_seed_agreement_refuses(labelings, measure, message):
    with pytest.raises(ValueError, match=message):
        pairwise_seed_agreement(labelings, measure)


def test_cluster_jaccard_known_answer():
    reference = [0, 0, 0, 1, 1, 1]
    # Point 0 drawn twice, point 5 not drawn: distinct points are 0..4.
    # Reference on them: {0, 1, 2} and {3, 4}; resample clusters: {0, 1} and {2, 3, 4}.
    jaccard = cluster_jaccard(reference, [0, 0, 1, 2, 3, 4], [7, 7, 7, 8, 8, 8])
    np.testing.assert_allclose(jaccard, [2 / 3, 2 / 3])


def test_cluster_jaccard_scores_an_absent_cluster_zero_as_clusterboot():
    jaccard = cluster_jaccard([0, 0, 1, 1, 2], [0, 1, 2, 3], [0, 0, 1, 1])
    np.testing.assert_array_equal(jaccard, [1.0, 1.0, 0.0])


def test_cluster_jaccard_can_mark_an_absent_cluster_nan():
    jaccard = cluster_jaccard([0, 0, 1, 1, 2], [0, 1, 2, 3], [0, 0, 1, 1], absent=np.nan)
    np.testing.assert_array_equal(jaccard, [1.0, 1.0, np.nan])


def test_cluster_jaccard_refuses_out_of_range_indices():
    with pytest.raises(ValueError, match="resample_indices must lie in"):
        cluster_jaccard([0, 0, 1], [0, -1], [0, 1])


RESAMPLES = [([0, 1, 2, 3], [0, 0, 1, 1]), ([0, 1, 2, 3, 4], [0, 1, 1, 1, 2])]


@pytest.mark.parametrize("absent, singleton", [(0.0, (0 + 1) / 2), (np.nan, 1.0)], ids=["clusterboot", "skipped"])
def test_bootstrap_jaccard_mean_with_an_absent_cluster(absent, singleton):
    jaccard = bootstrap_jaccard([0, 0, 1, 1, 2], RESAMPLES, absent=absent)
    assert jaccard.shape == (2, 3)
    # Cluster 2 is absent from the first resample: clusterboot counts a 0, the old protocol skips it.
    expected = [(1 + 1 / 2) / 2, (1 + 2 / 3) / 2, singleton]
    np.testing.assert_allclose(mean_jaccard_per_cluster(jaccard), expected)


def test_jaccard_standard_error_known_answer():
    jaccard = np.array([[1.0, 0.2], [0.5, np.nan], [0.0, np.nan]])
    np.testing.assert_allclose(jaccard_standard_error(jaccard), [0.5 / np.sqrt(3), np.nan])


def test_distinct_in_order_keeps_first_occurrences_as_r_unique():
    assert distinct_in_order([4, 2, 4, 4, 0, 2]).tolist() == [4, 2, 0]


@pytest.mark.parametrize(
    "mean_jaccard, verdict",
    [
        (0.0, "dissolved"),
        (0.5, "dissolved"),
        (0.55, "not to trust"),
        (0.6, "doubtful"),
        (0.74, "doubtful"),
        (0.75, "stable"),
        (0.85, "highly stable"),
        (1.0, "highly stable"),
    ],
)
def test_jaccard_verdict_boundaries(mean_jaccard, verdict):
    assert jaccard_verdict(mean_jaccard) == verdict


@pytest.mark.parametrize("bad", [np.nan, -0.1, 1.1])
def test_jaccard_verdict_refuses_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="mean_jaccard"):
        jaccard_verdict(bad)


@pytest.mark.parametrize("draw", [bootstrap_indices, subsample_indices])
def test_resample_indices_reproducible(draw):
    first, again, other = draw(50, 3, 1), draw(50, 3, 1), draw(50, 3, 2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert all(indices.min() >= 0 and indices.max() < 50 for indices in first)


def test_resample_index_sizes():
    assert all(indices.size == 50 for indices in bootstrap_indices(50, 3, 0))
    for indices in subsample_indices(50, 3, 0, fraction=0.8):
        assert indices.size == 40
        assert np.unique(indices).size == 40
    with pytest.raises(ValueError, match="fraction"):
        subsample_indices(50, 3, 0, fraction=1.5)


def _kmeans(k):
    def fit_predict(X, resample_no):
        return KMeans(n_clusters=k, n_init=3, random_state=resample_no).fit_predict(X)

    return fit_predict


@pytest.mark.parametrize("draw", [bootstrap_indices, subsample_indices])
def test_resample_stability_separates_blobs_from_noise(draw):
    n = 300
    blobs, _ = make_blobs(n, centers=[[0, 0], [10, 0], [0, 10]], cluster_std=1.0, random_state=0)
    # 5-D: on the 2-D unit square a well-optimised KMeans tiling with k=5 is
    # itself reproducible (stability tracks the objective's symmetry, not
    # structure), so it would not serve as the structureless case.
    noise = np.random.default_rng(1).uniform(size=(n, 5))
    indices = draw(n, 15, 0)

    on_blobs = resample_stability(blobs, _kmeans(3), _kmeans(3)(blobs, 99), indices)
    on_noise = resample_stability(noise, _kmeans(5), _kmeans(5)(noise, 99), indices)

    assert on_blobs["n_resamples"] == 15
    assert on_blobs["jaccard"].shape == (15, 3)
    assert (on_blobs["mean_jaccard"] >= 0.85).all()
    assert on_blobs["ari_mean"] > 0.95
    assert on_noise["mean_jaccard"].mean() < on_blobs["mean_jaccard"].min() - 0.15
    assert on_noise["ari_mean"] < on_blobs["ari_mean"] - 0.15


def test_the_clusterboot_protocol_refits_on_the_distinct_drawn_points():
    X = np.arange(6, dtype=float)[:, None]
    seen = {}

    def fit_predict(X_resample, resample_no):
        seen[resample_no] = X_resample[:, 0].tolist()
        return (X_resample[:, 0] >= 3).astype(int)

    indices = [np.array([0, 0, 1, 4, 4, 5]), np.array([5, 1, 5, 2, 1, 0])]
    reference = np.array([0, 0, 0, 1, 1, 1])
    duplicates = resample_stability(X, fit_predict, reference, indices, protocol="duplicates")
    assert seen == {0: [0, 0, 1, 4, 4, 5], 1: [5, 1, 5, 2, 1, 0]}
    clusterboot = resample_stability(X, fit_predict, reference, indices)
    assert seen == {0: [0, 1, 4, 5], 1: [5, 1, 2, 0]}  # once each, in the order drawn (R's unique)
    np.testing.assert_array_equal(clusterboot["jaccard"], duplicates["jaccard"])
    np.testing.assert_array_equal(clusterboot["se_jaccard"], [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown bootstrap protocol"):
        resample_stability(X, fit_predict, reference, indices, protocol="jitter")


def test_an_outlier_cluster_is_doubtful_under_clusterboot_and_perfect_when_skipped():
    # A lone far point is its own cluster; a bootstrap misses it with probability (1 - 1/n)^n ~ 0.37.
    blobs, _ = make_blobs(60, centers=[[0, 0], [10, 0]], cluster_std=0.5, random_state=0)
    X = np.vstack([blobs, [[100.0, 100.0]]])
    reference = _kmeans(3)(X, 0)
    outlier = np.searchsorted(np.unique(reference), reference[-1])
    indices = bootstrap_indices(len(X), 40, 0)
    kept = resample_stability(X, _kmeans(3), reference, indices)
    skipped = resample_stability(X, _kmeans(3), reference, indices, protocol="duplicates")
    assert skipped["mean_jaccard"][outlier] == 1.0
    drawn = np.mean([len(X) - 1 in idx for idx in indices])
    assert kept["mean_jaccard"][outlier] == pytest.approx(drawn)


# --- the same measures from contingency tables (the sweep's assignment pass) -------------------

TABLE_TWINS = {
    **{f"partition/{name}": (PARTITION_AGREEMENT[name], measure)
       for name, measure in PARTITION_AGREEMENT_FROM_TABLE.items()},
    **{f"class/{name}": (CLASS_AGREEMENT[name], measure) for name, measure in CLASS_AGREEMENT_FROM_TABLE.items()},
}


@pytest.mark.parametrize("name", sorted(TABLE_TWINS))
@pytest.mark.parametrize("case", ["random", "nested", "one-cluster", "identical"])
def test_table_measure_equals_its_label_twin(name, case):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 6, size=500)
    b = {"random": rng.integers(0, 4, size=500), "nested": a // 2, "one-cluster": np.zeros(500, int),
         "identical": a}[case]
    on_labels, on_table = TABLE_TWINS[name]
    assert on_table(contingency(a, b)[0]) == pytest.approx(on_labels(a, b), abs=1e-12)


def test_table_measures_ignore_empty_clusters():
    counts = contingency(LABELS, OTHER_LABELS)[0]
    padded = np.zeros((6, 5), dtype=np.int64)
    padded[:4, :4] = counts
    for _, on_table in TABLE_TWINS.values():
        assert on_table(padded) == pytest.approx(on_table(counts), abs=1e-12)


def test_windowed_expected_mutual_information_matches_sklearn_on_many_points():
    # 200,000 points: the window leaves out most terms, and must not change the AMI.
    rng = np.random.default_rng(3)
    a = rng.integers(0, 8, size=200_000)
    b = np.where(rng.random(200_000) < 0.7, a, rng.integers(0, 8, size=200_000))
    assert ami_from_table(contingency(a, b)[0]) == pytest.approx(adjusted_mutual_information(a, b), abs=1e-10)


def test_seed_agreement_from_tables_equals_pairwise_seed_agreement():
    rng = np.random.default_rng(5)
    labelings = rng.integers(0, 3, size=(4, 300))
    tables = [contingency(a, b)[0] for a, b in itertools.combinations(labelings, 2)]
    expected = pairwise_seed_agreement_all(labelings)
    for measure, found in seed_agreement_from_tables(tables).items():
        assert found == pytest.approx(expected[measure])


def test_table_measures_refuse_negative_counts():
    with pytest.raises(ValueError, match="counts >= 0"):
        ari_from_table([[1, -1], [0, 2]])
