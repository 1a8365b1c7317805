"""Class re-clustering over every seed of one k of a stability sweep (the job ``jobs.recluster``).

For each seed's clustering, ``pipelines.class_groups.regroup_classes`` groups the classes into
``k_re`` groups; the groupings of all seeds are then summarised by how often two classes share a
group (co-assignment) and by the groups that recur. The maths is ``pipelines.class_groups``'s; this
module reads the sweep, loops over the seeds and writes. It reads only the sweep's small tables
(class x cluster counts per seed, the class means): never the feature matrix, nor a label per row.

Output folder::

    OUT/groups.json          recurring groups (class names, share of seeds), the most frequent
                             whole grouping, method, k, k_re, n_seeds
    OUT/co_assignment.csv    class x class: share of seeds in which two classes share a group
    OUT/classes.csv          seed 0's per-class table: count, group, the method's description
    OUT/plots/membership.png     class x cluster shares of seed 0, classes ordered by group
    OUT/plots/co_assignment.png  the co-assignment table
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import plots
from pipelines.config import ReclusterConfig, natural_key
from pipelines.class_groups import (
    ReclusterResult,
    canonical_partition,
    co_assignment,
    membership,
    recurring_groups,
    regroup_classes,
)
from pipelines.rundir import CLASS_COUNTS_FILE, CLASS_MEANS_FILE, GROUPS_FILE, k_dir, read_manifest
from pipelines.storage import atomic_output, write_json_atomic


@dataclass(frozen=True)
class ClassTables:
    """The classes the sweep saw (those with points): per seed how they spread over the clusters,
    and their mean feature vectors."""

    class_ids: np.ndarray  # [m] class index of each row below
    counts: np.ndarray  # [seeds, m, k]
    means: np.ndarray  # [m, d]
    class_names: list[str]


@dataclass(frozen=True)
class ReclusterOutcome:
    config: ReclusterConfig
    partition: list[list[str]]  # the most frequent grouping, as class names
    partition_seeds: int  # seeds that gave it
    n_seeds: int
    out: Path

    def line(self) -> str:
        groups = " | ".join("{" + ", ".join(group) + "}" for group in self.partition)
        return (f"k={self.config.k} → {groups} in {self.partition_seeds}/{self.n_seeds} seeds "
                f"({self.config.method}, k_re={self.config.k_re})")


def load_class_tables(stability: str | Path, k: int) -> ClassTables:
    """The class x cluster counts of every seed of ``k`` and the class means, as the sweep summed them."""
    manifest = read_manifest(stability)
    if k not in manifest["k"]:
        raise ValueError(f"k={k} is not in the sweep at {stability} (k: {', '.join(map(str, manifest['k']))})")
    counts_file = k_dir(stability, k) / CLASS_COUNTS_FILE
    if not counts_file.is_file():
        raise ValueError(f"the feature table the sweep at {stability} clustered has no class labels: "
                         "there are no classes to re-cluster")
    counts = np.load(counts_file)
    present = np.flatnonzero(counts[0].sum(axis=1) > 0)
    means = np.load(Path(stability) / CLASS_MEANS_FILE)[present]
    return ClassTables(present, counts[:, present], means, manifest["class_names"])


def regroup_seeds(tables: ClassTables, config: ReclusterConfig) -> list[ReclusterResult]:
    """One re-clustering of the classes per seed of the sweep (its own KMeans seed, too)."""
    return [
        regroup_classes(config.method, class_ids=tables.class_ids, class_sizes=counts.sum(axis=1),
                        class_counts=counts, class_means=tables.means, k_re=config.k_re, seed=seed,
                        allow_nominal_mean=config.allow_nominal_mean)
        for seed, counts in enumerate(tables.counts)
    ]


def names_of(class_indices, class_ids: np.ndarray, class_names: list[str]) -> list[str]:
    """Class names of rows of a ReclusterResult (row i is class ``class_ids[i]``), sorted."""
    return sorted((class_names[class_ids[row]] for row in class_indices), key=natural_key)


def most_frequent_partition(groupings: np.ndarray) -> tuple[frozenset[frozenset[int]], int]:
    """The grouping of the classes that most seeds gave, whatever the group ids, and how many gave it."""
    return Counter(canonical_partition(grouping) for grouping in groupings).most_common(1)[0]


def run_recluster(stability: str | Path, config: ReclusterConfig, out: str | Path,
                  overwrite: bool = False) -> ReclusterOutcome:
    labels = load_class_tables(stability, config.k)
    results = regroup_seeds(labels, config)
    class_ids = results[0].class_ids  # the same classes for every seed
    groupings = np.vstack([result.groups for result in results])
    partition, partition_seeds = most_frequent_partition(groupings)
    partition_names = sorted((names_of(group, class_ids, labels.class_names) for group in partition),
                             key=lambda names: natural_key(names[0]))
    names = [labels.class_names[class_id] for class_id in class_ids]
    with atomic_output(out, folder=True, overwrite=overwrite) as folder:
        write_json_atomic(folder / GROUPS_FILE, {
            "method": config.method, "k": config.k, "k_re": config.k_re, "n_seeds": len(results),
            "min_share": config.min_share,
            "groups": [{"classes": names_of(group, class_ids, labels.class_names), "share": share}
                       for group, share in recurring_groups(groupings, config.min_share)],
            "partition": {"groups": partition_names, "seeds": partition_seeds},
        })
        co_assigned = pd.DataFrame(co_assignment(groupings), index=names, columns=names)
        co_assigned.to_csv(folder / "co_assignment.csv", index_label="class")
        class_table(results[0], names).to_csv(folder / "classes.csv", index=False)
        write_plots(folder / "plots", labels, results[0], co_assigned, config)
    return ReclusterOutcome(config, partition_names, partition_seeds, len(results), Path(out))


def class_table(result: ReclusterResult, names: list[str]) -> pd.DataFrame:
    """One row per class: name, group, and the method's per-class table (vectors spread over columns)."""
    columns = {"class": names, "group": result.groups}
    for name, values in result.table.items():
        values = np.asarray(values)
        wide = values.ndim == 2  # e.g. membership [n_classes, k]: one column per cluster
        columns.update({f"{name}_{j}": column for j, column in enumerate(values.T)} if wide else {name: values})
    return pd.DataFrame(columns)


def write_plots(folder: Path, tables: ClassTables, seed0: ReclusterResult, co_assigned: pd.DataFrame,
                config: ReclusterConfig) -> None:
    """Seed 0's class x cluster shares and the co-assignment, both with the classes in group order."""
    order = np.lexsort((np.arange(len(seed0.groups)), seed0.groups))
    shares = membership(tables.counts[0])
    rows = [f"{co_assigned.index[row]} (group {seed0.groups[row]})" for row in order]
    plots.heatmap(shares[order], rows, list(range(config.k)), folder / "membership.png", xlabel="cluster",
                  title=f"share of each class in each cluster (k={config.k}, seed 0)")
    plots.heatmap(co_assigned.to_numpy()[np.ix_(order, order)], rows, list(co_assigned.index[order]),
                  folder / "co_assignment.png",
                  title=f"share of seeds in which two classes share a group ({config.method}, k_re={config.k_re})")
