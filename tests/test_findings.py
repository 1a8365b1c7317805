"""The recommended k and the per-cluster findings: known answers, and the planted k of blobs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_limits

from pipelines.config import StabilityConfig, natural_key
from pipelines.findings import (
    attribute_findings,
    attributes_from_pattern,
    benjamini_hochberg,
    categorical_enrichment,
    cluster_findings,
    dominant_class,
    enrichment_p,
    recommend_k,
)
from pipelines.sweep_scores import sweep_sequential


def test_the_largest_all_stable_k_wins_over_a_more_stable_smaller_k():
    found = recommend_k({2: [0.99, 0.99], 3: [0.8, 0.9, 0.76], 4: [0.9, 0.9, 0.9, 0.5]})
    assert (found["k"], found["runner_up"]) == (3, 2)
    assert "largest k whose 3 clusters are all stable" in found["reason"] and "at k = 4 only 3 of 4" in found["reason"]


def test_without_an_all_stable_k_the_most_stable_clusters_win():
    found = recommend_k({2: [0.9, 0.6], 3: [0.9, 0.8, 0.4], 4: [0.9, 0.8, 0.5, 0.55]})
    assert (found["k"], found["runner_up"]) == (4, 3)  # 2 stable each; k=4's least is higher
    assert found["reason"].startswith("No k has every cluster stable") and "2 of 4" in found["reason"]


def test_the_largest_k_swept_says_to_sweep_further():
    found = recommend_k({2: [0.9, 0.9], 3: [0.9, 0.9, 0.9]})
    assert found["k"] == 3 and "sweep larger k" in found["reason"]


def test_no_recommendation_without_resamples():
    found = recommend_k({2: [np.nan, np.nan], 3: [np.nan] * 3})
    assert found["k"] is None and found["runner_up"] is None and "resamples = 0" in found["reason"]


def test_a_single_k_has_no_runner_up():
    assert recommend_k({4: [0.9] * 4})["runner_up"] is None


def test_cluster_findings_known_answer():
    # clusters 0, 1, 2 of sizes 3, 2, 1 (and an empty cluster 3); class x cluster counts, the
    # point of cluster 2 unlabelled
    sizes = np.array([3, 2, 1, 0])
    class_counts = np.array([[1, 0, 0, 0], [2, 0, 0, 0], [0, 2, 0, 0]])
    found = cluster_findings(sizes, [0.9, 0.7, np.nan, 0.5], [0.01, 0.02, np.nan, 0.1], class_counts,
                             ["a", "b", "c"])
    assert len(found) == 3  # the empty cluster is not a finding
    assert found[0] == {"cluster": 0, "size": 3, "jaccard": 0.9, "jaccard_se": 0.01, "verdict": "highly stable",
                        "dominant_class": "b", "purity": 0.6667, "labelled": 3}
    assert (found[1]["verdict"], found[1]["dominant_class"], found[1]["purity"]) == ("doubtful", "c", 1.0)
    assert found[2]["jaccard"] is None and found[2]["verdict"] is None and found[2]["dominant_class"] is None
    assert "dominant_class" not in cluster_findings(sizes, [0.9] * 4, [0.0] * 4)[0]


def test_dominant_class_without_names_uses_the_number():
    assert dominant_class(np.array([0, 0, 0, 2]), [])["dominant_class"] == "3"


def test_natural_sort_puts_s2_before_s10():
    assert sorted(["s10", "s2", "s1", "s21", "s3"], key=natural_key) == ["s1", "s2", "s3", "s10", "s21"]


@pytest.mark.parametrize("planted", [5])
def test_the_recommended_k_is_the_planted_k_of_well_separated_blobs(planted):
    X, y = make_blobs(n_samples=400, n_features=4, centers=planted, cluster_std=1.0, center_box=(-20, 20),
                      random_state=1)
    config = StabilityConfig(k="2-8", seeds=2, resamples=20, silhouette_sample=200)
    with threadpool_limits(1):
        results = sweep_sequential(X, config, y)
    found = recommend_k({k: result.bootstrap["mean_jaccard"] for k, result in results.items()})
    assert found["k"] == planted, found
    # Above the planted k a blob is split, and the split does not survive resampling.
    assert not any(found["standing"][k]["all_stable"] for k in range(planted + 1, 9))


# --- attributes: enrichment against scipy ---------------------------------------------------------


def test_benjamini_hochberg_is_scipys():
    from scipy.stats import false_discovery_control

    p = np.random.default_rng(0).uniform(size=50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"), rtol=1e-12)


@pytest.mark.parametrize("hits, size, carriers, total", [(5, 5, 10, 100), (12, 15, 40, 400), (0, 10, 30, 60),
                                                         (3, 20, 3, 50)])
def test_enrichment_p_is_fishers_exact_test_one_sided(hits, size, carriers, total):
    from scipy.stats import fisher_exact

    table = [[hits, size - hits], [carriers - hits, total - size - carriers + hits]]
    expected = fisher_exact(table, alternative="greater").pvalue
    assert enrichment_p(hits, size, carriers, total) == pytest.approx(expected, rel=1e-9)


def test_enrichment_on_a_known_table():
    # 3 clusters of 20; "liked" is yes for 15 of cluster 0, 2 of cluster 1 and 3 of cluster 2.
    labels = np.repeat([0, 1, 2], 20)
    liked = np.array(["no"] * 60, dtype=object)
    liked[:15], liked[20:22], liked[40:43] = "yes", "yes", "yes"
    liked[59] = None  # unknown: left out
    tests = {(test["cluster"], test["value"]): test for test in categorical_enrichment(labels, liked)}
    assert len(tests) == 6
    yes0 = tests[(0, "yes")]
    assert (yes0["count"], yes0["cluster_size"], yes0["share"]) == (15, 20, 0.75)
    assert yes0["fold"] == pytest.approx(0.75 / (20 / 59), abs=1e-4)
    assert yes0["p"] == pytest.approx(enrichment_p(15, 20, 20, 59))
    from scipy.stats import false_discovery_control

    keys = sorted(tests)
    np.testing.assert_allclose([tests[key]["p_adjusted"] for key in keys],
                               false_discovery_control([tests[key]["p"] for key in keys]), rtol=1e-12)
    found = attribute_findings(labels, {"liked": liked, "age": np.arange(60.0), "empty": [None] * 60})
    enriched = found["categorical"]["liked"]["enriched"]
    assert (enriched[0]["cluster"], enriched[0]["value"]) == (0, "yes") and enriched[0]["p_adjusted"] < 1e-4
    assert {(test["cluster"], test["value"]) for test in enriched} <= {(0, "yes"), (1, "no"), (2, "no")}
    assert [test["p_adjusted"] for test in enriched] == sorted(test["p_adjusted"] for test in enriched)
    assert 0 < found["categorical"]["liked"]["nmi"] < 1 and "empty" not in found["categorical"]
    assert found["numeric"]["age"] == {0: 9.5, 1: 29.5, 2: 49.5}
    as_categories = attribute_findings(labels, {"age": np.arange(60.0)}, categorical=["age"])
    assert "age" in as_categories["categorical"] and not as_categories["numeric"]


def test_attributes_from_a_file_name_pattern():
    paths = ["att_faces/s12/3.pgm", "att_faces/s2/liked_1.pgm", None]
    found = attributes_from_pattern(paths, r"/s(?P<person>\d+)/(?:(?P<tag>[a-z]+)_)?")
    assert found == {"person": ["12", "2", None], "tag": [None, "liked", None]}
    with pytest.raises(ValueError, match="no named group"):
        attributes_from_pattern(paths, r"s\d+")
