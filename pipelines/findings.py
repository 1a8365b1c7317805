"""What a sweep found, in words a user can act on: which k to pick, which clusters are real, and
what each cluster holds. Pure functions of numpy arrays (no pandas, Ray or torch), so the stability
stage, the report and a notebook compute the same answer.

The recommended k (:func:`recommend_k`): **the largest k whose clusters are all stable**, i.e.
every cluster's mean bootstrap Jaccard (Hennig's clusterboot) is at least 0.75. Stability used as
a score to maximise favours small k: fewer, larger clusters survive resampling more easily, so
"the most stable k" is nearly always the smallest one swept. Used as a constraint (every cluster
must be real) and then asking for the finest such partition, it picks the most detail the data
support: on planted blobs, k below the planted number merges blobs (often stably), k above it
splits a blob (unstably), and the rule lands on the planted k. When no k has every cluster
stable, the k with the most stable clusters is recommended, and the reason says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from pipelines.config import natural_key

STABLE_JACCARD = 0.75  # Hennig: clusters at or above are "stable" (0.85: "highly stable")


def k_standing(jaccard: Sequence[float], threshold: float = STABLE_JACCARD) -> dict:
    """One k's clusters summed up: how many are stable, the least and mean Jaccard.

    >>> k_standing([0.9, 0.8, 0.6])
    {'n_clusters': 3, 'n_stable': 2, 'all_stable': False, 'min_jaccard': 0.6, 'mean_jaccard': 0.7667}
    """
    values = np.asarray(jaccard, dtype=float)
    values = values[np.isfinite(values)]
    n_stable = int((values >= threshold).sum())
    return {"n_clusters": len(jaccard), "n_stable": n_stable,
            "all_stable": bool(values.size == len(jaccard) and n_stable == len(jaccard)),
            "min_jaccard": round(float(values.min()), 4) if values.size else None,
            "mean_jaccard": round(float(values.mean()), 4) if values.size else None}


def _rank(k: int, standing: dict) -> tuple:
    """Larger is better: every k with all clusters stable (the largest first), then the others by
    their number of stable clusters and their least Jaccard."""
    if standing["all_stable"]:
        return (1, k, 0.0)
    return (0, standing["n_stable"], standing["min_jaccard"])


def recommend_k(jaccard_by_k: Mapping[int, Sequence[float]], threshold: float = STABLE_JACCARD) -> dict:
    """The recommended k, the runner-up and a one-sentence reason (see the module's docstring).

    Parameters
    ----------
    jaccard_by_k : mapping of k to the mean bootstrap Jaccard of each of its clusters
        NaN where unknown (a sweep without resamples).
    threshold : float
        The mean Jaccard from which a cluster counts as stable.

    Returns
    -------
    dict
        ``k`` and ``runner_up`` (None when there is none), ``reason`` (str), and ``standing``:
        per k, :func:`k_standing`.

    >>> recommend_k({2: [0.95, 0.9], 3: [0.9, 0.8, 0.8], 4: [0.9, 0.6, 0.7, 0.8]})["k"]
    3
    """
    standing = {int(k): k_standing(values, threshold) for k, values in sorted(jaccard_by_k.items())}
    scored = {k: entry for k, entry in standing.items() if entry["min_jaccard"] is not None}
    if not scored:
        return {"k": None, "runner_up": None, "standing": standing,
                "reason": "No k can be recommended: the sweep ran without bootstrap resamples (resamples = 0)."}
    order = sorted(scored, key=lambda k: _rank(k, scored[k]), reverse=True)
    best = order[0]
    return {"k": best, "runner_up": order[1] if len(order) > 1 else None, "standing": standing,
            "reason": recommendation_reason(best, scored, threshold)}


def recommendation_reason(k: int, standing: Mapping[int, dict], threshold: float) -> str:
    """One sentence on why ``k`` was recommended."""
    entry = standing[k]
    if not entry["all_stable"]:
        return (f"No k has every cluster stable (bootstrap Jaccard ≥ {threshold}); k = {k} has the most stable "
                f"clusters, {entry['n_stable']} of {k}, so treat only those as real.")
    finer = [other for other in standing if other > k]
    sentence = (f"k = {k} is the largest k whose {k} clusters are all stable (bootstrap Jaccard ≥ {threshold}, "
                f"the least {entry['min_jaccard']:.2f})")
    if not finer:
        return sentence + "; it is the largest k swept, so sweep larger k to see whether finer clusters hold."
    unstable = min(finer)
    return sentence + (f"; at k = {unstable} only {standing[unstable]['n_stable']} of {unstable} are, so finer "
                       f"partitions split clusters that do not survive resampling.")


def cluster_findings(sizes: ArrayLike, jaccard: Sequence[float], jaccard_se: Sequence[float],
                     class_counts: ArrayLike | None = None, class_names: Sequence[str] = ()) -> list[dict]:
    """Per cluster with points (``sizes`` [k] of clusters 0..k-1; ``jaccard`` and ``jaccard_se``
    per cluster, NaN where unknown): size, mean bootstrap Jaccard and its standard error, Hennig's
    verdict and, with ``class_counts`` [classes, k], the dominant class and its share of the
    cluster's labelled points (purity)."""
    from pipelines.measures import jaccard_verdict

    found = []
    for cluster in np.flatnonzero(np.asarray(sizes) > 0):
        mean, se = jaccard[cluster], jaccard_se[cluster]
        entry = {"cluster": int(cluster), "size": int(sizes[cluster]), "jaccard": finite_or_none(mean),
                 "jaccard_se": finite_or_none(se),
                 "verdict": jaccard_verdict(mean) if math.isfinite(mean) else None}
        if class_counts is not None:
            entry.update(dominant_class(np.asarray(class_counts)[:, cluster], class_names))
        found.append(entry)
    return found


def dominant_class(counts: ArrayLike, class_names: Sequence[str]) -> dict:
    """The most frequent class of a cluster (``counts``: its points per class) and its share of
    the cluster's labelled points.

    >>> dominant_class(np.array([1, 2]), ["a", "b"])
    {'dominant_class': 'b', 'purity': 0.6667, 'labelled': 3}
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() == 0:
        return {"dominant_class": None, "purity": None, "labelled": 0}
    top = int(counts.argmax())
    name = class_names[top] if top < len(class_names) else str(top)
    return {"dominant_class": name, "purity": round(float(counts[top] / counts.sum()), 4),
            "labelled": int(counts.sum())}


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: unknown numbers are written as null."""
    return float(value) if value is not None and math.isfinite(value) else None


# --- attributes: what the clusters mean ----------------------------------------------------------

ENRICHED_P = 0.05  # Benjamini-Hochberg adjusted p-values at or below: the cluster is enriched
NUMERIC_MIN_VALUES = 10  # a numeric column with fewer distinct values is treated as categories


def benjamini_hochberg(p_values: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (the false discovery rate of each test's cut-off).

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.5]).round(4).tolist()
    [0.04, 0.0533, 0.0533, 0.5]
    """
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]  # monotone from the largest p down
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def enrichment_p(in_cluster_with: int, cluster_size: int, total_with: int, total: int) -> float:
    """P(at least ``in_cluster_with`` of a cluster's ``cluster_size`` points carry the value) when
    ``total_with`` of ``total`` do: the hypergeometric tail, i.e. Fisher's exact test, one-sided.

    >>> f"{enrichment_p(5, 5, 10, 100):.4g}"  # C(10, 5) / C(100, 5)
    '3.347e-06'
    """
    from scipy.stats import hypergeom

    return float(hypergeom.sf(in_cluster_with - 1, total, total_with, cluster_size))


def categorical_enrichment(labels: ArrayLike, values: Sequence) -> list[dict]:
    """Every (cluster, value) of one categorical attribute: counts, share, fold over the base rate,
    one-sided p-value and its Benjamini-Hochberg adjustment over all the pairs. Points whose value
    is missing (None) are left out."""
    labels, values = np.asarray(labels), np.asarray(values, dtype=object)
    known = np.array([value is not None for value in values])
    labels, values = labels[known], values[known].astype(str)
    tests = []
    for value in sorted(set(values.tolist()), key=natural_key):
        carriers = values == value
        for cluster in np.unique(labels):
            members = labels == cluster
            hits = int((carriers & members).sum())
            tests.append({"cluster": int(cluster), "value": value, "count": hits, "cluster_size": int(members.sum()),
                          "share": round(hits / members.sum(), 4),
                          "fold": round((hits / members.sum()) / (carriers.sum() / len(values)), 4),
                          "p": enrichment_p(hits, int(members.sum()), int(carriers.sum()), len(values))})
    for test, adjusted in zip(tests, benjamini_hochberg([test["p"] for test in tests])):
        test["p_adjusted"] = float(adjusted)
    return tests


def is_numeric(values: Sequence) -> bool:
    """Numbers with at least NUMERIC_MIN_VALUES distinct values (fewer: categories, e.g. 0/1 answers)."""
    known = [value for value in values if value is not None]
    try:
        numbers = np.asarray(known, dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(known) and len(np.unique(numbers)) >= NUMERIC_MIN_VALUES


def attribute_findings(labels: ArrayLike, attributes: Mapping[str, Sequence], categorical: Sequence[str] = ()) -> dict:
    """One partition against every attribute: per categorical attribute its NMI and ARI with the
    clusters and the enriched (cluster, value) pairs; per numeric attribute each cluster's mean.
    The attributes named in ``categorical`` are categories even when they look like numbers
    (a person's number parsed from a file name)."""
    from pipelines.measures import adjusted_rand_index, normalized_mutual_information

    labels = np.asarray(labels)
    found: dict = {"categorical": {}, "numeric": {}}
    for name, column in attributes.items():
        column = np.asarray(column, dtype=object)
        known = np.array([value is not None for value in column])
        if not known.any():
            continue
        if name not in categorical and is_numeric(column):
            numbers = np.where(known, column, np.nan).astype(float)
            found["numeric"][name] = {int(c): finite_or_none(np.nanmean(numbers[labels == c])) if
                                      np.isfinite(numbers[labels == c]).any() else None for c in np.unique(labels)}
            continue
        codes = np.unique(column[known].astype(str), return_inverse=True)[1]
        tests = categorical_enrichment(labels, column)
        found["categorical"][name] = {
            "nmi": normalized_mutual_information(codes, labels[known]),
            "ari": adjusted_rand_index(codes, labels[known]),
            "enriched": sorted((test for test in tests if test["p_adjusted"] <= ENRICHED_P and test["fold"] > 1),
                               key=lambda test: test["p_adjusted"])}
    return found


def attributes_from_pattern(paths: Sequence[str | None], pattern: str) -> dict[str, list[str | None]]:
    """Named groups of ``pattern`` searched in each path: one attribute per group (None where the
    path is missing or does not match).

    >>> attributes_from_pattern(["faces/s1/3.pgm", None], r"/s(?P<person>\\d+)/")
    {'person': ['1', None]}
    """
    regex = re.compile(pattern)
    if not regex.groupindex:
        raise ValueError(f"attribute_pattern {pattern!r} has no named group, e.g. (?P<person>\\d+)")
    matches = [regex.search(path) if path is not None else None for path in paths]
    return {name: [match[name] if match else None for match in matches] for name in regex.groupindex}
