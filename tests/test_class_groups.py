from __future__ import annotations

import numpy as np
import pytest

from pipelines.class_groups import (
    canonical_partition,
    class_cluster_table,
    co_assignment,
    membership,
    recluster_classes,
    recurring_groups,
)

PLANTED_GROUPS = frozenset({frozenset({0, 1, 2}), frozenset({3, 4, 5})})


def points_from_shares(shares: np.ndarray, points_per_class: int = 100):
    """Class and cluster labels; class ``c`` has ``shares[c, j]`` of its points in cluster ``j``."""
    counts = np.round(np.asarray(shares) * points_per_class).astype(int)
    class_labels = np.repeat(np.arange(len(counts)), counts.sum(axis=1))
    cluster_labels = np.concatenate([np.repeat(np.arange(counts.shape[1]), row) for row in counts])
    return class_labels, cluster_labels


def planted():
    """6 classes: classes 0-2 live in clusters {0, 1}, classes 3-5 in {2, 3}."""
    shares = np.array(
        [
            [0.3, 0.7, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.7, 0.3, 0.0, 0.0],
            [0.0, 0.0, 0.3, 0.7],
            [0.0, 0.0, 0.5, 0.5],
            [0.0, 0.0, 0.7, 0.3],
        ]
    )
    class_labels, cluster_labels = points_from_shares(shares)
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [20.0, 20.0], [21.0, 20.0]])
    noise = np.random.default_rng(0).normal(scale=0.1, size=(cluster_labels.size, 2))
    return class_labels, cluster_labels, centres[cluster_labels] + noise


def test_class_cluster_table_and_membership():
    counts = class_cluster_table([0, 0, 0, 2], [1, 1, 0, 2], n_classes=3, k=4)
    np.testing.assert_array_equal(counts, [[1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(ValueError, match=r"classes \[1\] have no points"):
        membership(counts)
    np.testing.assert_allclose(membership(counts[[0, 2]]), [[1 / 3, 2 / 3, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(ValueError, match="cluster_labels must lie in"):
        class_cluster_table([0, 1], [0, 4], n_classes=2, k=4)


def test_seed_method_refused_for_more_than_two_clusters():
    class_labels, cluster_labels, _ = planted()
    with pytest.raises(ValueError, match="allow_nominal_mean"):
        recluster_classes(
            "seed", class_labels=class_labels, cluster_labels=cluster_labels, k=4, k_re=2
        )
    with pytest.warns(UserWarning, match="nominal"):
        result = recluster_classes(
            "seed",
            class_labels=class_labels,
            cluster_labels=cluster_labels,
            k=4,
            k_re=2,
            allow_nominal_mean=True,
        )
    assert result.groups.shape == (6,)


@pytest.mark.parametrize("seed", range(3))
def test_membership_equals_seed_method_for_two_clusters(seed):
    # For k=2 a class's mean cluster index is its share in cluster 1, so both
    # methods group the same classes.
    share_in_1 = np.random.default_rng(seed).uniform(size=9).round(2)
    class_labels, cluster_labels = points_from_shares(np.column_stack([1 - share_in_1, share_in_1]))
    common = dict(class_labels=class_labels, cluster_labels=cluster_labels, k=2, k_re=3, seed=seed)

    by_seed = recluster_classes("seed", **common)
    by_membership = recluster_classes("membership", **common)

    np.testing.assert_allclose(by_seed.table["mean_cluster_index"], share_in_1)
    np.testing.assert_allclose(
        by_seed.table["std_cluster_index"], np.sqrt(share_in_1 * (1 - share_in_1))
    )
    assert canonical_partition(by_seed.groups) == canonical_partition(by_membership.groups)


@pytest.mark.parametrize("k_re", [6, 7, 1])
def test_degenerate_k_re_refused(k_re):
    class_labels, cluster_labels, _ = planted()
    with pytest.raises(ValueError, match="k_re"):
        recluster_classes(
            class_labels=class_labels, cluster_labels=cluster_labels, k=4, k_re=k_re
        )


def test_planted_structure_recovered_by_membership_and_centroid():
    class_labels, cluster_labels, X = planted()
    by_membership = recluster_classes(
        "membership", class_labels=class_labels, cluster_labels=cluster_labels, k=4, k_re=2
    )
    by_centroid = recluster_classes("centroid", class_labels=class_labels, X=X, k_re=2)

    assert canonical_partition(by_membership.groups) == PLANTED_GROUPS
    assert canonical_partition(by_centroid.groups) == PLANTED_GROUPS
    np.testing.assert_array_equal(by_membership.class_ids, np.arange(6))
    np.testing.assert_array_equal(by_membership.table["count"], np.full(6, 100))
    assert by_membership.table["membership"].shape == (6, 4)
    assert by_centroid.table["class_mean"].shape == (6, 2)


def test_missing_inputs_refused():
    class_labels, cluster_labels, _ = planted()
    with pytest.raises(ValueError, match="needs X"):
        recluster_classes("centroid", class_labels=class_labels, k_re=2)
    with pytest.raises(ValueError, match="needs cluster_labels and k"):
        recluster_classes("membership", class_labels=class_labels, k_re=2)
    with pytest.raises(ValueError, match="unknown method"):
        recluster_classes(
            "mean", class_labels=class_labels, cluster_labels=cluster_labels, k=4, k_re=2
        )


GROUPINGS = np.array(
    [
        [0, 0, 0, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
        [5, 5, 5, 2, 2, 2],
        [0, 0, 1, 1, 1, 1],
    ]
)


def test_co_assignment():
    shared = co_assignment(GROUPINGS)
    np.testing.assert_array_equal(np.diag(shared), np.ones(6))
    np.testing.assert_array_equal(shared, shared.T)
    assert shared[0, 1] == 1.0
    assert shared[2, 3] == 0.25
    assert shared[0, 5] == 0.0


def test_recurring_groups():
    assert recurring_groups(GROUPINGS) == [((0, 1, 2), 0.75), ((3, 4, 5), 0.75)]
    assert recurring_groups(GROUPINGS, min_share=0.0)[2:] == [((0, 1), 0.25), ((2, 3, 4, 5), 0.25)]


def test_recurring_groups_invariant_to_relabelling():
    relabel = np.random.default_rng(0)
    relabelled = np.array([relabel.permutation(10)[row] for row in GROUPINGS])
    assert recurring_groups(relabelled, min_share=0.0) == recurring_groups(GROUPINGS, min_share=0.0)
    np.testing.assert_array_equal(co_assignment(relabelled), co_assignment(GROUPINGS))


def test_planted_group_recurs_over_seeds():
    class_labels, cluster_labels, _ = planted()
    groupings = np.array(
        [
            recluster_classes(
                class_labels=class_labels, cluster_labels=cluster_labels, k=4, k_re=2, seed=seed
            ).groups
            for seed in range(4)
        ]
    )
    assert recurring_groups(groupings) == [((0, 1, 2), 1.0), ((3, 4, 5), 1.0)]
