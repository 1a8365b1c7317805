"""The stability stage: a sweep of KMeans (or a Gaussian mixture) over k x seeds with Ray Tune,
and one Ray Data pass that assigns every row of the table.

Nothing here holds the feature matrix. Every fit and resample is made on a sample
(``StabilityConfig.sample_size`` rows, chosen by a hash of each id, so a rerun picks the same;
a smaller table is its own sample): one Tune trial per k runs
:func:`pipelines.sweep_scores.fit_k` (every seed of that k, and the bootstrap and subsample
resamples of its seed-0 clustering, clusterboot's protocol on the sample). A fit takes about a
second on 10,000 x 512 points; a trial per (k, seed) would pay Tune's per-trial bookkeeping ten
times as often for no more parallelism. Then the assignment pass (``pipelines.assignment``, an
actor pool over the table's row groups) puts every row into every fit's clusters, writes the
assignments, and sums per batch the count tables every other score comes from (sizes, exact
inertia, class x cluster, seed x seed); the driver only adds small tables.

A feature transform (``StabilityConfig.transform``: standardize, l2, pca, umap; see
``pipelines.transforms``) is fitted once on the sample on the driver; the pass applies it to
every row. The resamples therefore measure the clusterer's stability on a fixed embedding;
whether the features themselves recur is the representation-stability question (``compare_runs``).

Output folder (paths and readers in ``pipelines.rundir``)::

    OUT/per_k/k=05/             one k: fit.json and models.npz (the trial's fits, which a rerun
                                reuses), then result.json (its scores over every row, the table's
                                fingerprint and the settings, and per cluster of seed 0 the ids
                                nearest its centre), class_counts.npy [seeds, classes, k] and
                                centroids.npy [k, d] (seed 0's cluster means of the table's features);
                                a rerun computes only the k missing here, and refuses results of
                                another table or settings
    OUT/assignments/k05/        every row's cluster at k=5, Parquet: id, path, k, cluster (seed 0),
                                seed_clusters (every seed's)
    OUT/runs.csv                one row per (k, seed): inertia, silhouette, acc, nmi, ari (vs classes)
    OUT/clusters.csv            one row per (k, cluster of seed 0): size, Jaccard, Hennig's verdict
    OUT/findings.json           the recommended k and its reason, every cluster (pipelines.findings)
    OUT/contingency/k=05.csv    class x cluster counts of seed 0 (tables with labels)
    OUT/class_means.npy         [classes, d] every class's mean feature vector (the re-clustering's)
    OUT/plots/*.png             stability vs k, per-cluster Jaccard, class x cluster heatmap
    OUT/sweep.json              what was swept; the re-clustering job reads it
    OUT/transformed.npy         the transformed sample (with a transform); a rerun reuses it
    OUT/representation.csv      with compare_runs: per k, agreement with the other autoencoders' sweeps
    OUT/summary.csv             one row per k (see ``summary_row``); written last, it marks a finished sweep

The trials and the pass's actors write into OUT themselves, so on a cluster of several machines
OUT must be storage that every node sees (as Tune's own storage path must be).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from pipelines.assignment import PassStats, assign_batch, assign_points
from pipelines.config import StabilityConfig, natural_key, parse_transform
from pipelines.errors import OutputExistsError, ResourceError
from pipelines.feature_table import feature_batches, feature_matrix, parquet_files, table_metadata_of, table_width
from pipelines.findings import (
    STABLE_JACCARD,
    attribute_findings,
    attributes_from_pattern,
    cluster_findings,
    recommend_k,
)
from pipelines.measures import bootstrap_indices, cross_model_agreement
from pipelines.rundir import (
    CENTROIDS_FILE,
    CLASS_COUNTS_FILE,
    CLASS_MEANS_FILE,
    CLUSTERS_FILE,
    FINDINGS_FILE,
    FIT_FILE,
    MANIFEST,
    MODELS_FILE,
    PER_K,
    REPRESENTATION_FILE,
    RESULT_FILE,
    RUNS_FILE,
    SUMMARY_FILE,
    TRANSFORMED,
    ASSIGNMENTS,
    assignments_dir,
    k_dir,
    read_assignments,
    read_labels,
    read_manifest,
)
from pipelines.storage import atomic_output, write_json_atomic
from pipelines.sweep_scores import (
    BOOTSTRAP_SEED,
    PROTOTYPES,
    KFit,
    KResult,
    SweepData,
    clusters_table,
    contingency_table,
    fit_k,
    k_result,
    per_cluster,
    runs_table,
    summary_row,
    transform_points,
)
from pipelines.transforms import FittedClusters, FittedTransform

log = logging.getLogger("featurelens.stability")

# What a per-k result depends on besides the table; the k range and the resources do not matter.
TRANSFORM_SETTINGS = ("transform", "pca_components", "umap_components", "umap_neighbors", "umap_min_dist",
                      "transform_seed")
RESULT_SETTINGS = ("seeds", "resamples", "bootstrap", "subsample_fraction", "silhouette_sample", "clusterer",
                   "gmm_covariance", *TRANSFORM_SETTINGS)


# --- what is clustered ------------------------------------------------------------------------


def check_k_fits(config: StabilityConfig, n_sample: int, n_rows: int) -> None:
    """Every k must leave a point per cluster: in the table, in the sample and in a subsample of it."""
    k_max = max(config.k_values)
    if k_max > n_rows:
        raise ValueError(f"k={k_max} is more than the {n_rows} rows of the feature table")
    if k_max > n_sample:
        raise ValueError(f"k={k_max} is more than the {n_sample} rows of the sample (sample_size); sample more")
    subsample_size = round(config.subsample_fraction * n_sample)
    if config.resamples and k_max > subsample_size:
        raise ValueError(f"k={k_max} is more than the {subsample_size} points of a subsample "
                         f"(subsample_fraction={config.subsample_fraction} of {n_sample} rows)")
    # clusterboot refits on the distinct drawn points, about 63% of them: look only when k is near that
    if config.resamples and config.bootstrap == "clusterboot" and k_max > n_sample / 2:
        distinct = min(len(np.unique(draw)) for draw in bootstrap_indices(n_sample, config.resamples, BOOTSTRAP_SEED))
        if k_max > distinct:
            raise ValueError(f"k={k_max} is more than the {distinct} distinct points of a bootstrap resample "
                             f"of the {n_sample} rows (clusterboot refits on them); sweep smaller k")


# --- the transformed sample ---------------------------------------------------------------------


def transformed_points(plan: SweepPlan) -> tuple[FittedTransform, NDArray[np.float32]]:
    """The fitted transform and the sample through it: fitted once, kept in OUT for a rerun of the
    same table and transform (UMAP of 70,000 points takes minutes)."""
    if not parse_transform(plan.config.transform):
        return FittedTransform(), plan.data.X
    identity = {"fingerprint": plan.data.fingerprint, "sample_rows": len(plan.data.X),
                "transform": {name: getattr(plan.config, name) for name in TRANSFORM_SETTINGS}}
    cached, fitted, record = (plan.out / TRANSFORMED, plan.out / f"{TRANSFORMED}.pkl",
                              plan.out / f"{TRANSFORMED}.json")
    if all(path.is_file() for path in (cached, fitted, record)) and json.loads(record.read_text()) == identity:
        log.info("stability: reusing the transformed sample in %s", cached)
        return pickle.loads(fitted.read_bytes()), np.load(cached)
    started = time.perf_counter()
    transform, points = transform_points(plan.data.X, plan.config)
    log.info("stability: transform %s fitted on %d x %d points in %.1f s -> %d dimensions", plan.config.transform,
             *plan.data.X.shape, time.perf_counter() - started, points.shape[1])
    save_npy(cached, points)
    with atomic_output(fitted) as tmp:
        tmp.write_bytes(pickle.dumps(transform))
    write_json_atomic(record, identity)
    return transform, points


# --- per-k files: what makes a sweep resumable --------------------------------------------------


def result_identity(data: SweepData, config: StabilityConfig) -> dict:
    return {"fingerprint": data.fingerprint, "n_points": data.rows, "sample_rows": len(data.X),
            "settings": {name: getattr(config, name) for name in RESULT_SETTINGS}}


def save_fit(out: Path, fit: KFit, identity: dict) -> None:
    # overwrite: a trial that Ray retries after its rename has nothing else to do.
    with atomic_output(k_dir(out, fit.k), folder=True) as folder:
        models = fit.models
        np.savez(folder / MODELS_FILE, centers=models.centers, **models.mixture)
        write_json_atomic(folder / FIT_FILE, {"identity": identity, "fit": fit.scores(),
                                              "clusterer": models.clusterer, "covariance": models.covariance})


def load_fit(out: Path, k: int) -> KFit:
    folder = k_dir(out, k)
    record = json.loads((folder / FIT_FILE).read_text())
    with np.load(folder / MODELS_FILE) as arrays:
        mixture = {name: arrays[name] for name in arrays.files if name != "centers"}
        models = FittedClusters(record["clusterer"], arrays["centers"], mixture, record["covariance"])
    return KFit(models=models, **record["fit"])


def save_k_result(out: Path, result: KResult, identity: dict) -> None:
    folder = k_dir(out, result.k)
    if result.class_counts is not None:
        save_npy(folder / CLASS_COUNTS_FILE, result.class_counts)
    save_npy(folder / CENTROIDS_FILE, result.centroids)
    write_json_atomic(folder / RESULT_FILE, {"identity": identity, "result": result.scores()})


def load_k_result(out: Path, k: int) -> KResult:
    folder = k_dir(out, k)
    scores = json.loads((folder / RESULT_FILE).read_text())["result"]
    counts = np.load(folder / CLASS_COUNTS_FILE) if (folder / CLASS_COUNTS_FILE).is_file() else None
    return KResult(**scores, class_counts=counts, centroids=np.load(folder / CENTROIDS_FILE))


def recorded_ks(out: Path, identity: dict, file_name: str) -> list[int]:
    """The k whose ``file_name`` (fit.json or result.json) is in ``out``; refuses those of another
    table or other settings."""
    found = []
    for record_file in sorted((out / PER_K).glob(f"k=*/{file_name}")):
        recorded = json.loads(record_file.read_text())
        mismatch = identity_mismatch(recorded["identity"], identity)
        if mismatch:
            raise OutputExistsError(f"{record_file.parent} holds results {mismatch}; "
                                    f"pass --overwrite to replace the results in {out}")
        found.append(int(record_file.parent.name.removeprefix("k=")))
    return found


def identity_mismatch(recorded: dict, current: dict) -> str:
    """Why results recorded under ``recorded`` do not belong to this sweep ('' when they do)."""
    if (recorded["fingerprint"], recorded["n_points"]) != (current["fingerprint"], current["n_points"]):
        return (f"of another feature table ({recorded['n_points']} rows, fingerprint {recorded['fingerprint']}; "
                f"this one: {current['n_points']} rows, {current['fingerprint']})")
    changed = [f"{name}={value} (now {current['settings'][name]})"
               for name, value in recorded["settings"].items() if current["settings"][name] != value]
    if recorded.get("sample_rows") != current["sample_rows"]:
        changed.append(f"a sample of {recorded.get('sample_rows')} rows (now {current['sample_rows']})")
    return f"computed with other settings: {', '.join(changed)}" if changed else ""


# --- the sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SweepPlan:
    """What a run will do: the k to fit and to assign, and the k a previous run already finished."""

    data: SweepData
    config: StabilityConfig
    out: Path
    todo: list[int]  # k the assignment pass must cover
    to_fit: list[int]  # of those, the k without fits from an earlier run
    done: list[int]
    overwrite: bool


@dataclass(frozen=True, eq=False)
class SweepOutcome:
    computed: list[int]  # k fitted by this run
    skipped: list[int]  # k whose fits an earlier run left
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
    check_k_fits(config, len(data.X), data.rows)
    for folder in compared_runs(config):
        missing = sorted(set(config.k_values) - set(read_manifest(folder)["k"]))
        if missing:
            raise ValueError(f"compare_runs: {folder} has no sweep of k={','.join(map(str, missing))}")
    load_attributes(config, data.ids, data.paths)  # a bad attributes file fails now, not after the sweep
    identity = result_identity(data, config)
    done = [] if overwrite else sorted(set(recorded_ks(out, identity, RESULT_FILE)) & set(config.k_values))
    fitted = [] if overwrite else recorded_ks(out, identity, FIT_FILE)
    todo = [k for k in config.k_values if k not in done]
    return SweepPlan(data, config, out, todo, [k for k in todo if k not in fitted], done, overwrite)


def run_sweep(plan: SweepPlan) -> SweepOutcome:
    """Fit the missing k with Ray Tune and assign every row with Ray Data (Ray must be up), then
    write every summary of the sweep."""
    if plan.overwrite:
        for folder in (PER_K, ASSIGNMENTS):
            shutil.rmtree(plan.out / folder, ignore_errors=True)
    if plan.done:
        log.info("stability: %d of %d k already in %s (k=%s); computing %s", len(plan.done),
                 len(plan.config.k_values), plan.out, ",".join(map(str, plan.done)), plan.todo or "none")
    if plan.todo:
        from pipelines.runtime import releasing_resources

        transform, points = transformed_points(plan)
        with releasing_resources():  # what the trials asked the autoscaler for, withdrawn after the pass
            if plan.to_fit:
                run_trials(plan, points)
            assign_rows(plan, transform, points, {k: load_fit(plan.out, k) for k in plan.todo})
    results = [load_k_result(plan.out, k) for k in plan.config.k_values]
    summary, findings = write_outputs(plan.out, plan.data, plan.config, results)
    reused = [k for k in plan.config.k_values if k not in plan.to_fit]  # their fits, or their results too
    return SweepOutcome(plan.to_fit, reused, summary, findings, plan.out)


def run_stability(data: SweepData, config: StabilityConfig, out: str | Path, overwrite: bool = False) -> SweepOutcome:
    return run_sweep(plan_sweep(data, config, out, overwrite))


def tune_trial(trial: dict, *, X: np.ndarray, config: StabilityConfig, out: str, identity: dict,
               threads: int) -> None:
    """One k in a Tune trial; X (the sample) comes from the object store, shared by all trials."""
    from ray import tune

    # sklearn's OpenMP and BLAS pools would otherwise each take every core of the machine.
    with threadpool_limits(limits=threads):
        fit = fit_k(X, trial["k"], config)
    save_fit(Path(out), fit, identity)
    tune.report({"k": fit.k, "seconds": fit.seconds})


def run_trials(plan: SweepPlan, points: NDArray[np.float32]) -> None:
    from ray import tune

    from pipelines.runtime import bundles, fit_or_grow

    # A trial larger than the cluster waits for its autoscaler (the request stands until the sweep ends).
    cpus = fit_or_grow(lambda cluster_cpus, _: trial_cpus(plan.config.cpus_per_trial, cluster_cpus, len(plan.to_fit)),
                       bundles(len(plan.to_fit), plan.config.cpus_per_trial or 1.0), plan.config.resource_timeout)
    trainable = tune.with_parameters(
        tune_trial, X=points, config=plan.config, out=str(plan.out),
        identity=result_identity(plan.data, plan.config), threads=max(1, int(cpus)))
    tune_dir = plan.out / ".tmp" / "tune"  # Tune's own records; ours are per_k
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # else Tune prints its banner even at verbose=0
    shutil.rmtree(tune_dir, ignore_errors=True)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus}),
        # Largest k first: they take longest, and the small ones then fill the gaps at the end.
        param_space={"k": tune.grid_search(sorted(plan.to_fit, reverse=True))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="sweep", storage_path=str(tune_dir.resolve()), verbose=0,
                                  callbacks=[progress_log(len(plan.to_fit))]),
    )
    log.info("stability: %d Tune trial(s) (one per k) with %g CPU(s) each, on a sample of %d of %d rows",
             len(plan.to_fit), cpus, len(plan.data.X), plan.data.rows)
    results = tuner.fit()
    failed = [result for result in results if result.error is not None]
    if failed:
        from pipelines.cli import root_cause

        raise RuntimeError(f"the trial of k={failed[0].config['k']} failed: {root_cause(failed[0].error)}")
    shutil.rmtree(tune_dir, ignore_errors=True)


# --- the assignment pass ------------------------------------------------------------------------


def assign_rows(plan: SweepPlan, transform: FittedTransform, points: NDArray[np.float32],
                fits: dict[int, KFit]) -> None:
    """Every row into every fit's clusters: the assignments of each k, its result.json (the scores
    from the pass's sums) and the class means. In memory when the sample is the whole table, else
    a Ray Data pass over the table's row groups."""
    started = time.perf_counter()
    staging = plan.out / ".tmp" / ASSIGNMENTS
    shutil.rmtree(staging, ignore_errors=True)
    models = {k: fit.models for k, fit in fits.items()}
    n_classes = len(plan.data.class_names)
    if plan.data.whole:
        data = plan.data
        classes = data.classes if data.classes is not None else np.full(len(data.ids), -1)
        labels, stats = assign_points(points, data.X, data.ids, classes, models, n_classes, PROTOTYPES)
        write_assignments(staging, "part-00000", labels, data.ids, data.paths)
    else:
        stats = assignment_pass(plan.data.source, transform, models, n_classes, staging)
    seconds = (time.perf_counter() - started) / len(fits)
    log.info("stability: %d rows assigned to %d k x %d seeds in %.1f s", stats.rows, len(fits), plan.config.seeds,
             seconds * len(fits))
    identity = result_identity(plan.data, plan.config)
    for k, fit in fits.items():
        with atomic_output(assignments_dir(plan.out, k), folder=True) as folder:
            for part in sorted((staging / assignments_dir(plan.out, k).name).glob("*.parquet")):
                part.rename(folder / part.name)
        save_k_result(plan.out, k_result(fit, stats.per_k[k], plan.data.classes is not None, seconds), identity)
    save_npy(plan.out / CLASS_MEANS_FILE, stats.class_sums / np.maximum(stats.class_sizes, 1)[:, None])
    shutil.rmtree(plan.out / ".tmp", ignore_errors=True)


def assignment_pass(source: str, transform: FittedTransform, models: dict[int, FittedClusters], n_classes: int,
                    staging: Path) -> PassStats:
    """The Ray Data pass: an actor per CPU, one row group of the table at a time; the driver adds
    up the sums each row group returns (a few kB per k)."""
    import ray

    from pipelines.runtime import cluster_cpus

    files = parquet_files(Path(source))
    width = table_width(files, table_metadata_of(files))
    units = [{"file": str(file), "row_group": group, "name": f"{number:05d}-{group:05d}"}
             for number, file in enumerate(files) for group in range(pq.ParquetFile(file).num_row_groups)]
    actors = max(1, min(len(units), int(cluster_cpus())))
    fitted = ray.put((transform, models))
    rows = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        AssignRowGroups, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1, fn_constructor_kwargs={"fitted": fitted, "n_classes": n_classes, "width": width,
                                           "staging": str(staging)})
    total = None
    for row in rows.iter_rows():
        stats = pickle.loads(row["stats"])
        total = stats if total is None else total.merge(stats)
    return total


# Rows per call of assign_batch: 16,384 x 512 floats take 32 MB, about 1/2 GB in all with their
# float64 copies and Arrow's buffers, whatever the size of the table's row groups.
ASSIGN_BATCH_ROWS = 16_384


class AssignRowGroups:
    """The pass's actor: holds the fitted transform and models, assigns one row group per call."""

    def __init__(self, fitted, n_classes: int, width: int, staging: str) -> None:
        import ray

        self.transform, self.models = ray.get(fitted)
        self.n_classes, self.width, self.staging = n_classes, width, Path(staging)

    def __call__(self, units: pa.Table) -> pa.Table:
        stats = []
        for unit in units.to_pylist():
            file, width = Path(unit["file"]), self.width
            total = None
            with threadpool_limits(limits=1):  # one actor per CPU
                batches = feature_batches(file, width, ASSIGN_BATCH_ROWS, [unit["row_group"]])
                for number, batch in enumerate(batches):
                    batch_stats = self.assign(batch, width, f"{unit['name']}-{number:04d}")
                    total = batch_stats if total is None else total.merge(batch_stats)
            stats.append(pickle.dumps(total))
        return pa.table({"stats": pa.array(stats, pa.binary())})

    def assign(self, batch: pa.Table, width: int, name: str) -> PassStats:
        ids, raw = batch["id"].to_numpy(), feature_matrix(batch, width)
        classes = batch["label"].fill_null(-1).to_numpy()
        labels, stats = assign_batch(self.transform.apply(raw), raw, ids, classes, self.models, self.n_classes,
                                     PROTOTYPES)
        write_assignments(self.staging, name, labels, ids, np.array(batch["path"].to_pylist(), dtype=object))
        return stats


def write_assignments(staging: Path, name: str, labels: dict[int, np.ndarray], ids: np.ndarray,
                      paths: np.ndarray | None) -> None:
    """One part file per k: id, path, k, cluster (seed 0) and seed_clusters (every seed's)."""
    for k, k_labels in labels.items():
        seeds = len(k_labels)
        table = pa.table({
            "id": pa.array(ids, pa.int64()),
            "path": pa.array(paths if paths is not None else [None] * len(ids), pa.string()),
            "k": pa.array(np.full(len(ids), k), pa.int64()),
            "cluster": pa.array(k_labels[0], pa.int64()),
            "seed_clusters": pa.FixedSizeListArray.from_arrays(pa.array(k_labels.T.ravel(), pa.int32()), seeds),
        })
        folder = staging / f"k{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(folder / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)


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
            raise ResourceError(f"cpus_per_trial={requested} is more than the cluster's {available:g} CPUs")
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
    findings = findings_document(out, data, config, results)
    write_json_atomic(out / FINDINGS_FILE, findings)
    if data.classes is not None:
        with atomic_output(out / "contingency", folder=True) as folder:
            for result in results:
                contingency_table(data.class_names, result).to_csv(folder / f"k={result.k:02d}.csv")
    with atomic_output(out / "plots", folder=True) as folder:
        plots.stability_vs_k(summary, folder / "stability_vs_k.png")
        plots.cluster_jaccard(clusters, folder / "cluster_jaccard.png")
        if data.classes is not None:
            k = heatmap_k(config, len(data.class_names))
            counts = contingency_table(data.class_names, next(result for result in results if result.k == k))
            counts = counts.iloc[sorted(range(len(counts)), key=lambda row: natural_key(counts.index[row]))]
            plots.heatmap(counts.to_numpy(), list(counts.index), list(range(k)), folder / f"classes_k={k:02d}.png",
                          title=f"points per class and cluster (k={k}, seed 0)", xlabel="cluster", fmt="d")
    write_json_atomic(out / MANIFEST, {**result_identity(data, config), "k": config.k_values,
                                       "features": data.source, "class_names": data.class_names,
                                       "sample_share": data.share})
    if config.compare_runs:
        write_csv(representation_table(out, config, results), out / REPRESENTATION_FILE)
    write_csv(summary, out / SUMMARY_FILE)  # last: the summary marks a finished sweep (pipelines.rundir)
    return summary, findings


def findings_document(out: Path, data: SweepData, config: StabilityConfig, results: list[KResult]) -> dict:
    """findings.json: the recommended k with its reason and, per k, every cluster of seed 0 with
    its size, bootstrap Jaccard (mean, standard error), verdict and dominant class."""
    recommendation = recommend_k({result.k: [value for size, value in zip(
        result.sizes, per_cluster(result.bootstrap, "mean_jaccard", result.k)) if size > 0] for result in results})
    per_k = []
    for result in results:
        counts = result.class_counts[0] if result.class_counts is not None else None
        entry = {"k": result.k, **recommendation["standing"][result.k],
                 "clusters": cluster_findings(result.sizes, per_cluster(result.bootstrap, "mean_jaccard", result.k),
                                              per_cluster(result.bootstrap, "se_jaccard", result.k), counts,
                                              data.class_names)}
        per_k.append(with_attributes(entry, out, config, result.k))
    return {"recommended_k": recommendation["k"], "runner_up": recommendation["runner_up"],
            "reason": recommendation["reason"],
            "rule": f"the largest k whose clusters all have mean bootstrap Jaccard >= {STABLE_JACCARD} "
                    "(pipelines.findings)",
            "bootstrap": {"protocol": config.bootstrap, "resamples": config.resamples},
            "labels": data.classes is not None,
            "attributes": sorted(load_attributes(config, data.ids, data.paths)), "per_k": per_k}


def with_attributes(entry: dict, out: Path, config: StabilityConfig, k: int) -> dict:
    """One k's findings with what the attributes say: NMI/ARI per categorical attribute, and per
    cluster its enriched values and numeric means (from the assignments: ids, paths, clusters)."""
    if not (config.attributes or config.attribute_pattern):
        return entry
    rows = read_assignments(out, k, ["id", "path", "cluster"])
    paths = np.array(rows["path"].to_pylist(), dtype=object)
    attributes = load_attributes(config, rows["id"].to_numpy(), paths)
    found = attribute_findings(rows["cluster"].to_numpy(), attributes, pattern_groups(config))
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


def load_attributes(config: StabilityConfig, ids: np.ndarray, paths: np.ndarray | None) -> dict[str, list]:
    """Per-image attributes, in the order of ``ids``: from attribute_pattern (named groups of
    each path) and the attributes CSV (a column wins over a pattern group of the same name)."""
    attributes: dict[str, list] = {}
    if config.attribute_pattern:
        if paths is None or all(path is None for path in paths):
            raise ValueError("attribute_pattern needs a feature table with a path column; this one has no paths")
        attributes.update(attributes_from_pattern(list(paths), config.attribute_pattern))
    if config.attributes:
        attributes.update(attributes_from_csv(Path(config.attributes), ids, paths))
    return attributes


def attributes_from_csv(path: Path, ids: np.ndarray, paths: np.ndarray | None) -> dict[str, list]:
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
    ours = paths if key == "path" else ids.astype(str)
    if key == "path" and paths is None:
        raise ValueError(f"attributes: {path} is keyed by path, but the feature table has no paths; key it by id")
    rows = pd.Index(table[key]).get_indexer(pd.Index(ours, dtype=object))
    if (rows < 0).all():
        raise ValueError(f"attributes: no {key} of {path} matches the feature table (e.g. {table[key].iloc[0]!r} "
                         f"against {ours[0]!r})")
    table = table.astype(object).where(table.notna(), None)
    return {name: [table[name].iloc[row] if row >= 0 else None for row in rows]
            for name in table.columns if name not in ("path", "id")}


def compared_runs(config: StabilityConfig) -> list[Path]:
    return [Path(folder.strip()).resolve() for folder in (config.compare_runs or "").split(",") if folder.strip()]


def representation_table(out: Path, config: StabilityConfig, results: list[KResult]) -> pd.DataFrame:
    """Per k: agreement (ARI, AMI) between this sweep's partitions and those of the sweeps in
    ``compare_runs`` (autoencoders trained with other seeds), matched point by point by id."""
    rows = []
    for result in results:
        ids, labels = read_labels(out, result.k)
        models = [labels] + [aligned_labels(folder, result.k, ids) for folder in compared_runs(config)]
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
