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

STABLE_JACCARD = 0.75  # Hennig: clusters at or above are "stable" (0.85: "highly stable")
# In the stability folder (written by pipelines.stability.write_outputs).
FINDINGS_FILE, ASSIGNMENTS_PARQUET, ASSIGNMENTS_CSV = "findings.json", "assignments.parquet", "assignments.csv"


def natural_key(name: str) -> list:
    """Sort key that orders digits by value: s2 before s10.

    >>> sorted(["s10", "s2", "s1", "Bag"], key=natural_key)
    ['Bag', 's1', 's2', 's10']
    """
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(name))]


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
    entry, largest = standing[k], max(standing)
    if not entry["all_stable"]:
        return (f"No k has every cluster stable (bootstrap Jaccard ≥ {threshold}); k = {k} has the most stable "
                f"clusters, {entry['n_stable']} of {k}, so treat only those as real.")
    finer = [other for other in standing if other > k]
    sentence = (f"k = {k} is the largest k whose {k} clusters are all stable (bootstrap Jaccard ≥ {threshold}, "
                f"the least {entry['min_jaccard']:.2f})")
    if not finer:
        return sentence + f"; it is the largest k swept, so sweep larger k to see whether finer clusters hold."
    unstable = min(finer)
    return sentence + (f"; at k = {unstable} only {standing[unstable]['n_stable']} of {unstable} are, so finer "
                       f"partitions split clusters that do not survive resampling.")


def cluster_findings(labels: ArrayLike, jaccard: Sequence[float], jaccard_se: Sequence[float],
                     classes: ArrayLike | None = None, class_names: Sequence[str] = ()) -> list[dict]:
    """Per cluster of one partition (in the order of ``np.unique(labels)``): size, mean bootstrap
    Jaccard and its standard error, Hennig's verdict and, when classes are known, the dominant
    class and its share of the cluster's labelled points (purity)."""
    from pipelines.measures import jaccard_verdict

    labels = np.asarray(labels)
    found = []
    for cluster, mean, se in zip(np.unique(labels), jaccard, jaccard_se):
        members = labels == cluster
        entry = {"cluster": int(cluster), "size": int(members.sum()), "jaccard": finite_or_none(mean),
                 "jaccard_se": finite_or_none(se),
                 "verdict": jaccard_verdict(mean) if math.isfinite(mean) else None}
        if classes is not None:
            entry.update(dominant_class(np.asarray(classes)[members], class_names))
        found.append(entry)
    return found


def dominant_class(classes: np.ndarray, class_names: Sequence[str]) -> dict:
    """The most frequent known class (ids >= 0) of a cluster's points and its share of them.

    >>> dominant_class(np.array([1, 1, 0, -1]), ["a", "b"])
    {'dominant_class': 'b', 'purity': 0.6667, 'labelled': 3}
    """
    known = classes[classes >= 0]
    if known.size == 0:
        return {"dominant_class": None, "purity": None, "labelled": 0}
    counts = np.bincount(known)
    top = int(counts.argmax())
    name = class_names[top] if top < len(class_names) else str(top)
    return {"dominant_class": name, "purity": round(float(counts[top] / known.size), 4), "labelled": int(known.size)}


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: unknown numbers are written as null."""
    return float(value) if value is not None and math.isfinite(value) else None
