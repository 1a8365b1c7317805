"""Cluster stability: a sweep of KMeans (or a Gaussian mixture) over k x seeds with Ray Tune.

One Tune trial per k fits every seed of that k and the resamples of its seed-0 clustering, and
scores them (:func:`evaluate_k`): the resamples need the seed-0 labels and the agreement between
seeds needs every seed, so one k is the smallest piece of work that needs nothing from another
trial, and the piece a rerun resumes from. A fit takes about a second on 10,000 x 512 points; a
trial per (k, seed) would pay Tune's per-trial bookkeeping ten times as often for no more
parallelism. :func:`sweep_sequential` does the same work in a plain loop (the benchmark's
baseline). The measures are ``pipelines.stability``'s; this module fits, schedules and writes.

A feature transform (``StabilityConfig.transform``: standardize, l2, pca, umap; see
``pipelines.transforms``) is fitted once on the driver before the trials start; every fit and
resample clusters the transformed points, which go to the object store once. The resamples
therefore measure the clusterer's stability on a fixed embedding; whether the features
themselves recur is the representation-stability question (``compare_runs``).

Output folder::

    OUT/per_k/k=05/             one finished k: labels.npy [seeds, n] int32, result.json (its scores,
                                the table's fingerprint and the settings); a rerun computes only
                                the k missing here, and refuses results of another table or settings
    OUT/runs.csv|parquet        one row per (k, seed): inertia, silhouette, acc, nmi, ari (vs classes)
    OUT/summary.csv|parquet     one row per k (see :func:`summary_row`)
    OUT/clusters.csv            one row per (k, cluster of seed 0): size, Jaccard, Hennig's verdict
    OUT/labels.npz              ids [n], and k=05 [seeds, n] int32 for every k
    OUT/contingency/k=05.csv    class x cluster counts of seed 0 (tables with labels)
    OUT/plots/*.png             stability vs k, per-cluster Jaccard, class x cluster heatmap
    OUT/sweep.json              what was swept; the re-clustering job reads it
    OUT/transformed.npy         the transformed points (with a transform); a rerun reuses them
    OUT/representation.csv      with compare_runs: per k, agreement with the other autoencoders' sweeps

The trials write OUT/per_k themselves, so on a cluster of several machines OUT must be storage
that every node sees (as Tune's own storage path must be).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from pipelines.config import ReclusterConfig, StabilityConfig, parse_transform
from pipelines.recluster import class_cluster_table
from pipelines.stability import (
    PARTITION_AGREEMENT,
    bootstrap_indices,
    class_agreement,
    cross_model_agreement,
    jaccard_verdict,
    pairwise_seed_agreement_all,
    resample_stability,
    subsample_indices,
)
from pipelines.storage import OutputExistsError, atomic_output_dir, write_json_atomic
from pipelines.transforms import apply_transform, fit_clusters, within_cluster_sum_of_squares

log = logging.getLogger("featurelens.clustering")

# Fixed seeds: every k is scored on the same silhouette sample and the same resamples, so that
# the differences between k are not differences between samples.
SILHOUETTE_SEED, BOOTSTRAP_SEED, SUBSAMPLE_SEED = 0, 1, 2
# What a per-k result depends on besides the table; the k range and the resources do not matter.
TRANSFORM_SETTINGS = ("transform", "pca_components", "umap_components", "umap_neighbors", "umap_min_dist",
                      "transform_seed")
RESULT_SETTINGS = ("seeds", "resamples", "subsample_fraction", "silhouette_sample", "clusterer", "gmm_covariance",
                   *TRANSFORM_SETTINGS)
CLASS_MEASURES = ("acc", "nmi", "ari")
PER_K, MANIFEST, LABELS, TRANSFORMED = "per_k", "sweep.json", "labels.npz", "transformed.npy"
REPRESENTATION = "representation"


# --- what is clustered ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SweepData:
    """The points of the sweep, and their classes when known."""

    X: NDArray[np.float32]  # [n, d]
    ids: NDArray[np.int64]  # [n]
    classes: NDArray[np.int64] | None  # [n], -1 where unknown; None when no point has a class
    class_names: list[str]  # by class index
    fingerprint: str  # names these rows: results of another table are refused
    source: str | None = None  # the feature table's path


def sweep_data(X: ArrayLike, *, ids: ArrayLike | None = None, classes: ArrayLike | None = None,
               class_names: list[str] | None = None, source: str | None = None) -> SweepData:
    """Sweep input from arrays (``ids`` default to row numbers, class names to the class numbers)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    ids = np.arange(len(X), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if classes is not None:
        classes = np.asarray(classes, dtype=np.int64)
        classes = classes if (classes >= 0).any() else None
    if class_names is None and classes is not None:
        class_names = [str(label) for label in range(classes.max() + 1)]
    for name, column in (("ids", ids), ("classes", classes)):
        if column is not None and column.shape != (len(X),):
            raise ValueError(f"{name} must have shape ({len(X)},), got {column.shape}")
    return SweepData(X, ids, classes, list(class_names or []), content_fingerprint(X, ids, classes), source)


def content_fingerprint(X: np.ndarray, ids: np.ndarray, classes: np.ndarray | None) -> str:
    """sha256 of the rows. The table's own fingerprint names the model, and one model's train and
    test tables share it; the sweep's results belong to these very rows."""
    digest = hashlib.sha256()
    for array in (X, ids, classes if classes is not None else np.empty(0)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def load_sweep_data(features: str | Path) -> SweepData:
    from pipelines.features import read_features

    table = read_features(features)
    return sweep_data(table.X, ids=table.ids, classes=table.labels, class_names=table.class_names,
                      source=str(Path(features).resolve()))


def check_k_fits(config: StabilityConfig, n_points: int) -> None:
    """Every k must leave a point per cluster, in the whole table and in a subsample."""
    k_max = max(config.k_values)
    if k_max > n_points:
        raise ValueError(f"k={k_max} is more than the {n_points} rows of the feature table")
    subsample_size = round(config.subsample_fraction * n_points)
    if config.resamples and k_max > subsample_size:
        raise ValueError(f"k={k_max} is more than the {subsample_size} points of a subsample "
                         f"(subsample_fraction={config.subsample_fraction} of {n_points} rows)")


# --- one k: fits and scores (no Ray) ----------------------------------------------------------


@dataclass(eq=False)
class KResult:
    """Everything one k produced: the labels of every seed and the scores computed from them."""

    k: int
    labels: NDArray[np.int32]  # [seeds, n]
    runs: list[dict]  # per seed: seed, inertia, silhouette, acc, nmi, ari
    seed_agreement: dict | None  # pairwise_seed_agreement_all; None with one seed
    bootstrap: dict | None  # see resample_summary; None without resamples
    subsample: dict | None
    seconds: float

    def scores(self) -> dict:
        return {name: value for name, value in asdict(self).items() if name != "labels"}


def fit(X: np.ndarray, k: int, seed: int, config: StabilityConfig) -> NDArray[np.int32]:
    return fit_clusters(X, k, seed, config.clusterer, config.gmm_covariance)


def evaluate_k(X: np.ndarray, k: int, config: StabilityConfig, classes: np.ndarray | None = None) -> KResult:
    """Fit the clusterer for every seed of ``k`` on the (transformed) points ``X``, and score the
    fits against each other, the classes and resamples of the points. The Tune trial and
    :func:`sweep_sequential` both run this."""
    started = time.perf_counter()
    labels = np.vstack([fit(X, k, seed, config) for seed in range(config.seeds)])
    sample = silhouette_indices(len(X), config.silhouette_sample)
    runs = [
        {"seed": seed, "inertia": within_cluster_sum_of_squares(X, seed_labels),
         "silhouette": silhouette(X[sample], seed_labels[sample]), **class_scores(classes, seed_labels)}
        for seed, seed_labels in enumerate(labels)
    ]
    # Per k in the trial rather than on the driver: 45 seed pairs of AMI take seconds, in parallel here.
    seed_agreement = pairwise_seed_agreement_all(labels) if config.seeds > 1 else None
    bootstrap, subsample = resample_scores(X, k, labels[0], config)
    return KResult(k, labels, runs, seed_agreement, bootstrap, subsample, time.perf_counter() - started)


def silhouette_indices(n_points: int, size: int) -> NDArray[np.int64]:
    """The fixed sample the silhouette is computed on: the same points for every trial."""
    rng = np.random.default_rng(SILHOUETTE_SEED)
    return np.sort(rng.choice(n_points, size=min(size, n_points), replace=False))


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """NaN where it is undefined: fewer than 2 clusters in the sample, or one point per cluster."""
    n_clusters = len(np.unique(labels))
    return float(silhouette_score(X, labels)) if 2 <= n_clusters < len(labels) else math.nan


def class_scores(classes: np.ndarray | None, labels: np.ndarray) -> dict[str, float]:
    """ACC, NMI and ARI against the classes, on the points whose class is known (NaN without)."""
    if classes is None:
        return dict.fromkeys(CLASS_MEASURES, math.nan)
    known = classes >= 0
    return class_agreement(classes[known], labels[known])


def resample_scores(X: np.ndarray, k: int, reference: np.ndarray,
                    config: StabilityConfig) -> tuple[dict | None, dict | None]:
    """Hennig's bootstrap and the subsample test of the seed-0 clustering ``reference``."""
    if config.resamples == 0:
        return None, None

    def refit(X_resample: np.ndarray, resample_no: int) -> np.ndarray:
        return fit(X_resample, k, resample_no, config)

    n = len(X)
    draws = (bootstrap_indices(n, config.resamples, BOOTSTRAP_SEED),
             subsample_indices(n, config.resamples, SUBSAMPLE_SEED, config.subsample_fraction))
    bootstrap, subsample = (resample_summary(resample_stability(X, refit, reference, indices)) for indices in draws)
    return bootstrap, subsample


def resample_summary(stability: dict) -> dict:
    """The JSON-able part of ``resample_stability``'s answer (the per-resample matrix is dropped)."""
    return {"cluster_ids": stability["cluster_ids"].tolist(), "mean_jaccard": stability["mean_jaccard"].tolist(),
            "ari_mean": stability["ari_mean"], "ari_std": stability["ari_std"]}


def sweep_sequential(X: ArrayLike, config: StabilityConfig, classes: ArrayLike | None = None) -> dict[int, KResult]:
    """The sweep as a plain loop in this process: the Tune path's work, without Tune or files."""
    data = sweep_data(X, classes=classes)
    points = transform_points(data.X, config)
    return {k: evaluate_k(points, k, config, data.classes) for k in config.k_values}


def transform_points(X: np.ndarray, config: StabilityConfig) -> NDArray[np.float32]:
    """``X`` through the configured transform (``X`` itself without one)."""
    steps = parse_transform(config.transform)
    if not steps:
        return X
    return apply_transform(X, steps, pca_components=config.pca_components, umap_components=config.umap_components,
                           umap_neighbors=config.umap_neighbors, umap_min_dist=config.umap_min_dist,
                           seed=config.transform_seed)


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
    write_file_atomic(cached, lambda path: save_npy(path, points))
    write_json_atomic(record, identity)
    return points


# --- per-k result files: what makes a sweep resumable -------------------------------------------


def k_dir(out: Path, k: int) -> Path:
    return out / PER_K / f"k={k:02d}"


def result_identity(data: SweepData, config: StabilityConfig) -> dict:
    return {"fingerprint": data.fingerprint, "n_points": len(data.X),
            "settings": {name: getattr(config, name) for name in RESULT_SETTINGS}}


def save_k_result(out: Path, result: KResult, identity: dict) -> None:
    # overwrite: a trial that Ray retries after its rename has nothing else to do.
    with atomic_output_dir(k_dir(out, result.k), overwrite=True) as folder:
        np.save(folder / "labels.npy", result.labels)
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
    out: Path

    def line(self) -> str:
        ks, seed_ari = self.summary["k"], self.summary["ari_mean"]
        text = (f"k={ks.iloc[0]}..{ks.iloc[-1]} in {self.out}: "
                f"computed {len(self.computed)} k, reused {len(self.skipped)}")
        return text + (f"; most stable across seeds: k={ks[seed_ari.idxmax()]}" if seed_ari.notna().any() else "")


def plan_sweep(data: SweepData, config: StabilityConfig, out: str | Path, overwrite: bool = False) -> SweepPlan:
    """Check the input and the output folder (before Ray starts), and find the k left to compute."""
    out = Path(out)
    check_k_fits(config, len(data.X))
    for folder in compared_runs(config):
        missing = sorted(set(config.k_values) - set(read_manifest(folder)["k"]))
        if missing:
            raise ValueError(f"compare_runs: {folder} has no sweep of k={','.join(map(str, missing))}")
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
    summary = write_outputs(plan.out, plan.data, plan.config, results)
    return SweepOutcome(plan.todo, plan.done, summary, plan.out)


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


def summary_row(result: KResult) -> dict:
    """One k: agreement between seeds, resampling stability, agreement with classes, fit quality."""
    runs = pd.DataFrame(result.runs)
    row: dict = {"k": result.k}
    for measure in PARTITION_AGREEMENT:
        agreement = (result.seed_agreement or {}).get(measure, {})
        row[f"{measure}_mean"], row[f"{measure}_std"] = agreement.get("mean", math.nan), agreement.get("std", math.nan)
    row.update(bootstrap_summary(result.bootstrap))
    row["subsample_ari_mean"] = result.subsample["ari_mean"] if result.subsample else math.nan
    row["subsample_ari_std"] = result.subsample["ari_std"] if result.subsample else math.nan
    for measure in CLASS_MEASURES:
        name = "class_ari" if measure == "ari" else measure  # ari_* is the agreement between seeds
        row[f"{name}_mean"], row[f"{name}_std"] = runs[measure].mean(), runs[measure].std(ddof=0)
    row["inertia_mean"], row["silhouette_mean"] = runs["inertia"].mean(), runs["silhouette"].mean()
    row["seconds"] = result.seconds
    return row


def bootstrap_summary(bootstrap: dict | None) -> dict:
    """Mean and least bootstrap Jaccard over the clusters, and how many are stable (NaN without)."""
    jaccard = [value for value in (bootstrap or {}).get("mean_jaccard", []) if math.isfinite(value)]
    if not jaccard:
        return dict.fromkeys(("bootstrap_jaccard_mean", "bootstrap_jaccard_min", "stable_clusters"), math.nan)
    return {"bootstrap_jaccard_mean": float(np.mean(jaccard)), "bootstrap_jaccard_min": min(jaccard),
            "stable_clusters": sum(verdict_of(value) in ("stable", "highly stable") for value in jaccard)}


def verdict_of(jaccard: float) -> str:
    """Hennig's verdict; '' for a cluster absent from every resample, or without resamples."""
    return jaccard_verdict(jaccard) if math.isfinite(jaccard) else ""


def runs_table(results: list[KResult]) -> pd.DataFrame:
    return pd.DataFrame([{"k": result.k, **run} for result in results for run in result.runs])


def clusters_table(results: list[KResult]) -> pd.DataFrame:
    """One row per cluster of seed 0 of every k, with its bootstrap and subsample Jaccard."""
    rows = []
    for result in results:
        # The Jaccard lists follow np.unique of the seed-0 labels too (resample_stability's order).
        cluster_ids, sizes = np.unique(result.labels[0], return_counts=True)
        missing = [math.nan] * len(cluster_ids)
        bootstrap = result.bootstrap["mean_jaccard"] if result.bootstrap else missing
        subsample = result.subsample["mean_jaccard"] if result.subsample else missing
        rows += [{"k": result.k, "cluster": int(cluster), "size": int(size), "bootstrap_jaccard": boot,
                  "subsample_jaccard": sub, "verdict": verdict_of(boot)}
                 for cluster, size, boot, sub in zip(cluster_ids, sizes, bootstrap, subsample)]
    return pd.DataFrame(rows)


def contingency_table(data: SweepData, result: KResult) -> pd.DataFrame:
    """Class x cluster counts of seed 0, on the points whose class is known."""
    known = data.classes >= 0
    counts = class_cluster_table(data.classes[known], result.labels[0][known], len(data.class_names), result.k)
    return pd.DataFrame(counts, index=pd.Index(data.class_names, name="class"),
                        columns=[f"cluster_{cluster}" for cluster in range(result.k)])


def write_outputs(out: Path, data: SweepData, config: StabilityConfig, results: list[KResult]) -> pd.DataFrame:
    """Every summary of the sweep, each file atomically; returns the per-k summary."""
    from pipelines import plots  # here: the trials, which import this module, need no matplotlib

    summary = pd.DataFrame([summary_row(result) for result in results])
    clusters = clusters_table(results)
    write_table(runs_table(results), out / "runs")
    write_file_atomic(out / "clusters.csv", lambda path: clusters.to_csv(path, index=False))
    labels = {"ids": data.ids, **{f"k={result.k:02d}": result.labels for result in results}}
    write_file_atomic(out / LABELS, lambda path: save_npz(path, labels))
    if data.classes is not None:
        with atomic_output_dir(out / "contingency", overwrite=True) as folder:
            for result in results:
                contingency_table(data, result).to_csv(folder / f"k={result.k:02d}.csv")
    with atomic_output_dir(out / "plots", overwrite=True) as folder:
        plots.stability_vs_k(summary, folder / "stability_vs_k.png")
        plots.cluster_jaccard(clusters, folder / "cluster_jaccard.png")
        if data.classes is not None:
            k = heatmap_k(config)
            counts = contingency_table(data, next(result for result in results if result.k == k))
            plots.heatmap(counts.to_numpy(), list(counts.index), list(range(k)), folder / f"classes_k={k:02d}.png",
                          title=f"points per class and cluster (k={k}, seed 0)", xlabel="cluster", fmt="d")
    write_json_atomic(out / MANIFEST, {**result_identity(data, config), "k": config.k_values,
                                       "features": data.source, "class_names": data.class_names})
    if config.compare_runs:
        write_table(representation_table(data, config, results), out / REPRESENTATION)
    write_table(summary, out / "summary")  # last: a summary marks a finished sweep (pipelines.pipeline)
    return summary


def compared_runs(config: StabilityConfig) -> list[Path]:
    return [Path(folder.strip()) for folder in (config.compare_runs or "").split(",") if folder.strip()]


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


def heatmap_k(config: StabilityConfig) -> int:
    if config.heatmap_k is not None:
        return config.heatmap_k
    recluster_k = ReclusterConfig().k
    return recluster_k if recluster_k in config.k_values else min(config.k_values)


def write_table(table: pd.DataFrame, stem: Path) -> None:
    write_file_atomic(stem.with_suffix(".csv"), lambda path: table.to_csv(path, index=False))
    write_file_atomic(stem.with_suffix(".parquet"), lambda path: table.to_parquet(path, index=False))


def save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object: given a path, numpy would append ".npy"
        np.save(file, array)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as file:  # a file object: given a path, numpy would append ".npz"
        np.savez_compressed(file, **arrays)


def write_file_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` fills a hidden file beside ``path``, which then replaces ``path`` in one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    tmp.replace(path)


def read_manifest(stability: str | Path) -> dict:
    path = Path(stability) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{stability}: no stability sweep here ({MANIFEST} missing); run jobs.stability first")
    return json.loads(path.read_text())


def read_labels(stability: str | Path, k: int) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """(ids [n], labels [seeds, n]) of one k of a finished sweep."""
    with np.load(Path(stability) / LABELS) as saved:
        return saved["ids"], saved[f"k={k:02d}"]
