"""The stability stage: a sweep of KMeans (or a Gaussian mixture) over k x seeds with Ray Tune.

One Tune trial per k runs :func:`pipelines.sweep_scores.evaluate_k` (every seed of that k, the
resamples of its seed-0 clustering, and their scores) and writes that k's folder: one k is the
piece a rerun resumes from. A fit takes about a second on 10,000 x 512 points; a trial per
(k, seed) would pay Tune's per-trial bookkeeping ten times as often for no more parallelism.

A feature transform (``StabilityConfig.transform``: standardize, l2, pca, umap; see
``pipelines.transforms``) is fitted once on the driver before the trials start; every fit and
resample clusters the transformed points, which go to the object store once. The resamples
therefore measure the clusterer's stability on a fixed embedding; whether the features
themselves recur is the representation-stability question (``compare_runs``).

Output folder (paths and readers in ``pipelines.rundir``)::

    OUT/per_k/k=05/             one finished k: labels.npy [seeds, n] int32, result.json (its scores,
                                the table's fingerprint and the settings); a rerun computes only
                                the k missing here, and refuses results of another table or settings
    OUT/ids.npy                 the ids of the points, in the order of every labels.npy
    OUT/runs.csv                one row per (k, seed): inertia, silhouette, acc, nmi, ari (vs classes)
    OUT/clusters.csv            one row per (k, cluster of seed 0): size, Jaccard, Hennig's verdict
    OUT/contingency/k=05.csv    class x cluster counts of seed 0 (tables with labels)
    OUT/plots/*.png             stability vs k, per-cluster Jaccard, class x cluster heatmap
    OUT/sweep.json              what was swept; the re-clustering job reads it
    OUT/transformed.npy         the transformed points (with a transform); a rerun reuses them
    OUT/representation.csv      with compare_runs: per k, agreement with the other autoencoders' sweeps
    OUT/summary.csv             one row per k (see ``summary_row``); written last, it marks a finished sweep

The trials write OUT/per_k themselves, so on a cluster of several machines OUT must be storage
that every node sees (as Tune's own storage path must be).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from pipelines.config import StabilityConfig, natural_key, parse_transform
from pipelines.errors import OutputExistsError
from pipelines.findings import (
    STABLE_JACCARD,
    attribute_findings,
    attributes_from_pattern,
    cluster_findings,
    recommend_k,
)
from pipelines.measures import bootstrap_indices, cross_model_agreement
from pipelines.rundir import (
    ASSIGNMENTS_CSV,
    ASSIGNMENTS_PARQUET,
    FINDINGS_FILE,
    CLUSTERS_FILE,
    IDS_FILE,
    MANIFEST,
    PER_K,
    REPRESENTATION_FILE,
    RUNS_FILE,
    SUMMARY_FILE,
    TRANSFORMED,
    k_dir,
    read_labels,
    read_manifest,
)
from pipelines.storage import atomic_output, write_json_atomic
from pipelines.sweep_scores import (
    BOOTSTRAP_SEED,
    KResult,
    SweepData,
    clusters_table,
    contingency_table,
    evaluate_k,
    resample_column,
    runs_table,
    summary_row,
    transform_points,
)

log = logging.getLogger("featurelens.stability")

# What a per-k result depends on besides the table; the k range and the resources do not matter.
TRANSFORM_SETTINGS = ("transform", "pca_components", "umap_components", "umap_neighbors", "umap_min_dist",
                      "transform_seed")
RESULT_SETTINGS = ("seeds", "resamples", "bootstrap", "subsample_fraction", "silhouette_sample", "clusterer",
                   "gmm_covariance", *TRANSFORM_SETTINGS)


# --- what is clustered ------------------------------------------------------------------------


def check_k_fits(config: StabilityConfig, n_points: int) -> None:
    """Every k must leave a point per cluster, in the whole table and in a subsample."""
    k_max = max(config.k_values)
    if k_max > n_points:
        raise ValueError(f"k={k_max} is more than the {n_points} rows of the feature table")
    subsample_size = round(config.subsample_fraction * n_points)
    if config.resamples and k_max > subsample_size:
        raise ValueError(f"k={k_max} is more than the {subsample_size} points of a subsample "
                         f"(subsample_fraction={config.subsample_fraction} of {n_points} rows)")
    # clusterboot refits on the distinct drawn points, about 63% of them: look only when k is near that
    if config.resamples and config.bootstrap == "clusterboot" and k_max > n_points / 2:
        distinct = min(len(np.unique(draw)) for draw in bootstrap_indices(n_points, config.resamples, BOOTSTRAP_SEED))
        if k_max > distinct:
            raise ValueError(f"k={k_max} is more than the {distinct} distinct points of a bootstrap resample "
                             f"of the {n_points} rows (clusterboot refits on them); sweep smaller k")


# --- the transformed points ---------------------------------------------------------------------


def transformed_points(plan: SweepPlan) -> NDArray[np.float32]:
    """The points the trials cluster: transformed once, kept in OUT for a rerun of the same
    table and transform (UMAP of 70,000 points takes minutes)."""
    if not parse_transform(plan.config.transform):
        return plan.data.X
    identity = {"fingerprint": plan.data.fingerprint,
                "transform": {name: getattr(plan.config, name) for name in TRANSFORM_SETTINGS}}
    cached, record = plan.out / TRANSFORMED, plan.out / f"{TRANSFORMED}.json"
    if cached.is_file() and record.is_file() and json.loads(record.read_text()) == identity:
        log.info("stability: reusing the transformed points in %s", cached)
        return np.load(cached)
    started = time.perf_counter()
    points = transform_points(plan.data.X, plan.config)
    log.info("stability: transform %s fitted on %d x %d points in %.1f s -> %d dimensions", plan.config.transform,
             *plan.data.X.shape, time.perf_counter() - started, points.shape[1])
    save_npy(cached, points)
    write_json_atomic(record, identity)
    return points


# --- per-k result files: what makes a sweep resumable -------------------------------------------


def result_identity(data: SweepData, config: StabilityConfig) -> dict:
    return {"fingerprint": data.fingerprint, "n_points": len(data.X),
            "settings": {name: getattr(config, name) for name in RESULT_SETTINGS}}


def save_k_result(out: Path, result: KResult, identity: dict) -> None:
    # overwrite: a trial that Ray retries after its rename has nothing else to do.
    with atomic_output(k_dir(out, result.k), folder=True) as folder:
        np.save(folder / "labels.npy", result.labels)  # a fresh folder: nothing to make atomic
        write_json_atomic(folder / "result.json", {"identity": identity, "result": result.scores()})


def load_k_result(out: Path, k: int) -> KResult:
    folder = k_dir(out, k)
    scores = json.loads((folder / "result.json").read_text())["result"]
    return KResult(labels=np.load(folder / "labels.npy"), **scores)


def finished_ks(out: Path, identity: dict) -> list[int]:
    """The k already in ``out``; refuses results of another table or other settings."""
    finished = []
    for result_file in sorted((out / PER_K).glob("k=*/result.json")):
        recorded = json.loads(result_file.read_text())
        mismatch = identity_mismatch(recorded["identity"], identity)
        if mismatch:
            raise OutputExistsError(f"{result_file.parent} holds results {mismatch}; "
                                    f"pass --overwrite to replace the results in {out}")
        finished.append(recorded["result"]["k"])
    return finished


def identity_mismatch(recorded: dict, current: dict) -> str:
    """Why results recorded under ``recorded`` do not belong to this sweep ('' when they do)."""
    if (recorded["fingerprint"], recorded["n_points"]) != (current["fingerprint"], current["n_points"]):
        return (f"of another feature table ({recorded['n_points']} rows, fingerprint {recorded['fingerprint']}; "
                f"this one: {current['n_points']} rows, {current['fingerprint']})")
    changed = [f"{name}={value} (now {current['settings'][name]})"
               for name, value in recorded["settings"].items() if current["settings"][name] != value]
    return f"computed with other settings: {', '.join(changed)}" if changed else ""


# --- the sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SweepPlan:
    """What a run will do: the k to compute, and the k a previous run already finished."""

    data: SweepData
    config: StabilityConfig
    out: Path
    todo: list[int]
    done: list[int]
    overwrite: bool


@dataclass(frozen=True, eq=False)
class SweepOutcome:
    computed: list[int]
    skipped: list[int]
    summary: pd.DataFrame = field(repr=False)
    findings: dict = field(repr=False)  # what findings.json holds
    out: Path

    def line(self) -> str:
        ks, seed_ari, findings = self.summary["k"], self.summary["ari_mean"], self.findings
        text = f"k={ks.iloc[0]}..{ks.iloc[-1]}: computed {len(self.computed)} k, reused {len(self.skipped)}"
        if findings.get("recommended_k") is not None:  # the findings' rule, not the seeds' agreement (small k)
            return text + f"; recommended k={findings['recommended_k']} (runner-up {findings['runner_up']})"
        return text + (f"; most stable across seeds: k={ks[seed_ari.idxmax()]}" if seed_ari.notna().any() else "")


def plan_sweep(data: SweepData, config: StabilityConfig, out: str | Path, overwrite: bool = False) -> SweepPlan:
    """Check the input and the output folder (before Ray starts), and find the k left to compute."""
    out = Path(out).resolve()  # the trials run in other working directories
    check_k_fits(config, len(data.X))
    for folder in compared_runs(config):
        missing = sorted(set(config.k_values) - set(read_manifest(folder)["k"]))
        if missing:
            raise ValueError(f"compare_runs: {folder} has no sweep of k={','.join(map(str, missing))}")
    load_attributes(config, data)  # a bad attributes file fails now, not after the sweep
    done = [] if overwrite else sorted(set(finished_ks(out, result_identity(data, config))) & set(config.k_values))
    todo = [k for k in config.k_values if k not in done]
    return SweepPlan(data, config, out, todo, done, overwrite)


def run_sweep(plan: SweepPlan) -> SweepOutcome:
    """Compute the missing k with Ray Tune (Ray must be up), then write every summary of the sweep."""
    if plan.overwrite:
        shutil.rmtree(plan.out / PER_K, ignore_errors=True)
    if plan.done:
        log.info("stability: %d of %d k already in %s (k=%s); computing %s", len(plan.done),
                 len(plan.config.k_values), plan.out, ",".join(map(str, plan.done)), plan.todo or "none")
    if plan.todo:
        run_trials(plan, transformed_points(plan))
    results = [load_k_result(plan.out, k) for k in plan.config.k_values]
    summary, findings = write_outputs(plan.out, plan.data, plan.config, results)
    return SweepOutcome(plan.todo, plan.done, summary, findings, plan.out)


def run_stability(data: SweepData, config: StabilityConfig, out: str | Path, overwrite: bool = False) -> SweepOutcome:
    return run_sweep(plan_sweep(data, config, out, overwrite))


def tune_trial(trial: dict, *, X: np.ndarray, classes: np.ndarray | None, config: StabilityConfig,
               out: str, identity: dict, threads: int) -> None:
    """One k in a Tune trial; X and the classes come from the object store, shared by all trials."""
    from ray import tune

    # sklearn's OpenMP and BLAS pools would otherwise each take every core of the machine.
    with threadpool_limits(limits=threads):
        result = evaluate_k(X, trial["k"], config, classes)
    save_k_result(Path(out), result, identity)
    tune.report(summary_row(result))


def run_trials(plan: SweepPlan, points: NDArray[np.float32]) -> None:
    from ray import tune

    from pipelines.runtime import cluster_cpus

    cpus = trial_cpus(plan.config.cpus_per_trial, cluster_cpus(), len(plan.todo))
    trainable = tune.with_parameters(
        tune_trial, X=points, classes=plan.data.classes, config=plan.config, out=str(plan.out),
        identity=result_identity(plan.data, plan.config), threads=max(1, int(cpus)))
    tune_dir = plan.out / ".tmp" / "tune"  # Tune's own records; ours are per_k
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # else Tune prints its banner even at verbose=0
    shutil.rmtree(tune_dir, ignore_errors=True)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus}),
        # Largest k first: they take longest, and the small ones then fill the gaps at the end.
        param_space={"k": tune.grid_search(sorted(plan.todo, reverse=True))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="sweep", storage_path=str(tune_dir.resolve()), verbose=0,
                                  callbacks=[progress_log(len(plan.todo))]),
    )
    log.info("stability: %d Tune trial(s) (one per k) with %g CPU(s) each", len(plan.todo), cpus)
    results = tuner.fit()
    failed = [result for result in results if result.error is not None]
    if failed:
        from pipelines.cli import root_cause

        raise RuntimeError(f"the trial of k={failed[0].config['k']} failed: {root_cause(failed[0].error)}")
    shutil.rmtree(tune_dir.parent, ignore_errors=True)


def progress_log(n_trials: int):
    """A Tune callback logging each finished k on the driver (Ray folds alike lines that trials print)."""
    from ray import tune

    class LogFinishedK(tune.Callback):
        def __init__(self) -> None:
            self.finished = 0

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.finished += 1
            log.info("stability: k=%d done in %.1f s (%d of %d)", result["k"], result["seconds"], self.finished,
                     n_trials)

    return LogFinishedK()


def trial_cpus(requested: float | None, available: float, n_trials: int) -> float:
    """The CPUs of one trial: as asked, else the cluster's shared out over the trials (at least 1)."""
    if requested is not None:
        if requested > available:
            raise ValueError(f"cpus_per_trial={requested} is more than the cluster's {available:g} CPUs")
        return requested
    return float(max(1, int(available // n_trials)))


# --- tables and figures -------------------------------------------------------------------------


def write_outputs(out: Path, data: SweepData, config: StabilityConfig,
                  results: list[KResult]) -> tuple[pd.DataFrame, dict]:
    """Every summary of the sweep, each file atomically; returns the per-k summary and the findings."""
    from pipelines import plots  # here: the trials, which import this module, need no matplotlib

    summary = pd.DataFrame([summary_row(result) for result in results])
    clusters = clusters_table(results)
    write_csv(runs_table(results), out / RUNS_FILE)
    write_csv(clusters, out / CLUSTERS_FILE)
    save_npy(out / IDS_FILE, data.ids)
    findings = findings_document(data, config, results)
    write_json_atomic(out / FINDINGS_FILE, findings)
    write_assignments(out, assignments_table(data, results))
    if data.classes is not None:
        with atomic_output(out / "contingency", folder=True) as folder:
            for result in results:
                contingency_table(data, result).to_csv(folder / f"k={result.k:02d}.csv")
    with atomic_output(out / "plots", folder=True) as folder:
        plots.stability_vs_k(summary, folder / "stability_vs_k.png")
        plots.cluster_jaccard(clusters, folder / "cluster_jaccard.png")
        if data.classes is not None:
            k = heatmap_k(config, len(data.class_names))
            counts = contingency_table(data, next(result for result in results if result.k == k))
            counts = counts.iloc[sorted(range(len(counts)), key=lambda row: natural_key(counts.index[row]))]
            plots.heatmap(counts.to_numpy(), list(counts.index), list(range(k)), folder / f"classes_k={k:02d}.png",
                          title=f"points per class and cluster (k={k}, seed 0)", xlabel="cluster", fmt="d")
    write_json_atomic(out / MANIFEST, {**result_identity(data, config), "k": config.k_values,
                                       "features": data.source, "class_names": data.class_names})
    if config.compare_runs:
        write_csv(representation_table(data, config, results), out / REPRESENTATION_FILE)
    write_csv(summary, out / SUMMARY_FILE)  # last: the summary marks a finished sweep (pipelines.rundir)
    return summary, findings


def findings_document(data: SweepData, config: StabilityConfig, results: list[KResult]) -> dict:
    """findings.json: the recommended k with its reason and, per k, every cluster of seed 0 with
    its size, bootstrap Jaccard (mean, standard error), verdict and dominant class."""
    def per_cluster(result: KResult, name: str) -> list[float]:
        return resample_column(result.bootstrap, name, len(np.unique(result.labels[0])))

    recommendation = recommend_k({result.k: per_cluster(result, "mean_jaccard") for result in results})
    attributes = load_attributes(config, data)
    per_k = [with_attributes({"k": result.k, **recommendation["standing"][result.k],
                              "clusters": cluster_findings(result.labels[0], per_cluster(result, "mean_jaccard"),
                                                           per_cluster(result, "se_jaccard"), data.classes,
                                                           data.class_names)},
                             result.labels[0], attributes, pattern_groups(config))
             for result in results]
    return {"recommended_k": recommendation["k"], "runner_up": recommendation["runner_up"],
            "reason": recommendation["reason"],
            "rule": f"the largest k whose clusters all have mean bootstrap Jaccard >= {STABLE_JACCARD} "
                    "(pipelines.findings)",
            "bootstrap": {"protocol": config.bootstrap, "resamples": config.resamples},
            "labels": data.classes is not None, "attributes": sorted(attributes), "per_k": per_k}


def with_attributes(entry: dict, labels: np.ndarray, attributes: dict, categorical: list[str]) -> dict:
    """One k's findings with what the attributes say: NMI/ARI per categorical attribute, and per
    cluster its enriched values and numeric means."""
    if not attributes:
        return entry
    found = attribute_findings(labels, attributes, categorical)
    entry["attributes"] = {name: {"nmi": value["nmi"], "ari": value["ari"]}
                           for name, value in found["categorical"].items()}
    for cluster in entry["clusters"]:
        cluster["enriched"] = [{"attribute": name, **{key: test[key] for key in ENRICHMENT_FIELDS}}
                               for name, value in found["categorical"].items() for test in value["enriched"]
                               if test["cluster"] == cluster["cluster"]]
        cluster["attribute_means"] = {name: means[cluster["cluster"]] for name, means in found["numeric"].items()}
    return entry


ENRICHMENT_FIELDS = ("value", "count", "cluster_size", "share", "fold", "p", "p_adjusted")


def pattern_groups(config: StabilityConfig) -> list[str]:
    """The attributes parsed from file names: categories, whatever they look like."""
    return list(re.compile(config.attribute_pattern).groupindex) if config.attribute_pattern else []


def load_attributes(config: StabilityConfig, data: SweepData) -> dict[str, list]:
    """Per-image attributes, in the order of the points: from attribute_pattern (named groups of
    each path) and the attributes CSV (a column wins over a pattern group of the same name)."""
    attributes: dict[str, list] = {}
    if config.attribute_pattern:
        if data.paths is None or all(path is None for path in data.paths):
            raise ValueError("attribute_pattern needs a feature table with a path column; this one has no paths")
        attributes.update(attributes_from_pattern(list(data.paths), config.attribute_pattern))
    if config.attributes:
        attributes.update(attributes_from_csv(Path(config.attributes), data))
    return attributes


def attributes_from_csv(path: Path, data: SweepData) -> dict[str, list]:
    """The CSV's columns matched to the points by its path column (else id); None where unmatched."""
    if not path.is_file():
        raise FileNotFoundError(f"attributes: no file {path}")
    table = pd.read_csv(path, dtype=str, keep_default_na=True)
    key = "path" if "path" in table.columns else "id" if "id" in table.columns else None
    if key is None or len(table.columns) < 2:
        raise ValueError(f"attributes: {path} needs a path or id column and at least one attribute column "
                         f"(columns: {', '.join(table.columns)})")
    if table[key].duplicated().any():
        raise ValueError(f"attributes: {path} lists {key} {table[key][table[key].duplicated()].iloc[0]} twice")
    ours = data.paths if key == "path" else data.ids.astype(str)
    if key == "path" and data.paths is None:
        raise ValueError(f"attributes: {path} is keyed by path, but the feature table has no paths; key it by id")
    rows = pd.Index(table[key]).get_indexer(pd.Index(ours, dtype=object))
    if (rows < 0).all():
        raise ValueError(f"attributes: no {key} of {path} matches the feature table (e.g. {table[key].iloc[0]!r} "
                         f"against {ours[0]!r})")
    table = table.astype(object).where(table.notna(), None)
    return {name: [table[name].iloc[row] if row >= 0 else None for row in rows]
            for name in table.columns if name not in ("path", "id")}


def assignments_table(data: SweepData, results: list[KResult]) -> pd.DataFrame:
    """id, path, k, cluster: every point's cluster in the seed-0 partition of every k swept."""
    paths = data.paths if data.paths is not None else np.full(len(data.ids), None, dtype=object)
    return pd.DataFrame({
        "id": np.tile(data.ids, len(results)).astype(np.int64),
        "path": pd.array(np.tile(paths, len(results)), dtype="string"),
        "k": np.repeat([result.k for result in results], len(data.ids)).astype(np.int64),
        "cluster": np.concatenate([result.labels[0] for result in results]).astype(np.int64),
    })


def write_assignments(out: Path, table: pd.DataFrame) -> None:
    with atomic_output(out / ASSIGNMENTS_PARQUET) as tmp:
        table.to_parquet(tmp, index=False)
    write_csv(table, out / ASSIGNMENTS_CSV)


def compared_runs(config: StabilityConfig) -> list[Path]:
    return [Path(folder.strip()).resolve() for folder in (config.compare_runs or "").split(",") if folder.strip()]


def representation_table(data: SweepData, config: StabilityConfig, results: list[KResult]) -> pd.DataFrame:
    """Per k: agreement (ARI, AMI) between this sweep's partitions and those of the sweeps in
    ``compare_runs`` (autoencoders trained with other seeds), matched point by point by id."""
    rows = []
    for result in results:
        models = [result.labels] + [aligned_labels(folder, result.k, data.ids) for folder in compared_runs(config)]
        row: dict = {"k": result.k}
        for measure in ("ari", "ami"):
            agreement = cross_model_agreement(models, measure)
            row.update({f"{measure}_mean": agreement["mean"], f"{measure}_std": agreement["std"],
                        f"{measure}_min": agreement["min"]})
        rows.append({**row, "n_models": len(models), "n_pairs": agreement["n_pairs"]})
    return pd.DataFrame(rows)


def aligned_labels(stability: Path, k: int, ids: np.ndarray) -> NDArray[np.int32]:
    """The labels [seeds, n] of another sweep's k, in the order of ``ids``; every id must be there."""
    other_ids, labels = read_labels(stability, k)
    position = pd.Index(other_ids).get_indexer(ids)
    if (position < 0).any():
        raise ValueError(f"compare_runs: {stability} lacks {(position < 0).sum()} of the {len(ids)} points "
                         f"(ids such as {ids[position < 0][:3].tolist()}); compare sweeps of the same images")
    return labels[:, position]


def heatmap_k(config: StabilityConfig, n_classes: int) -> int:
    """The k of the class x cluster heatmap: as configured, else the number of classes when swept."""
    if config.heatmap_k is not None:
        return config.heatmap_k
    return n_classes if n_classes in config.k_values else min(config.k_values)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False)


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp, tmp.open("wb") as file:  # a file object: numpy would append ".npy"
        np.save(file, array)
