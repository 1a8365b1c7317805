"""The stability sweep with Ray Tune, its resumption, and the class re-clustering job: on planted
blobs (a known answer) and on the real tiny feature table."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_limits

from jobs import recluster as recluster_job
from jobs import stability as stability_job
from pipelines import stability, sweep_scores
from pipelines.config import CLUSTERERS, StabilityConfig
from pipelines.errors import OutputExistsError
from pipelines.feature_table import read_features
from pipelines.rundir import read_labels, read_manifest

PLANTED_K = 4
SMALL = {"seeds": 4, "resamples": 2, "silhouette_sample": 200}
PNG_MAGIC = b"\x89PNG"


@pytest.fixture(scope="module")
def blobs() -> sweep_scores.SweepData:
    # Equidistant centres: which blobs merge (k < 4) or split (k > 4) depends on the seed, so only
    # the planted k is stable across seeds.
    X, y = make_blobs(n_samples=240, n_features=6, centers=8 * np.eye(PLANTED_K, 6), random_state=0)
    return sweep_scores.sweep_data(X, classes=y)


@pytest.fixture(scope="module")
def blob_sweep(ray_session, blobs, tmp_path_factory) -> stability.SweepOutcome:
    return stability.run_stability(blobs, StabilityConfig(k="2-5", **SMALL), tmp_path_factory.mktemp("blobs") / "st")


@pytest.fixture(scope="module")
def resumed_sweep(ray_session, blobs, tmp_path_factory):
    """k=2-3, then k=2-4 into the same folder; with the first run's per-k files and their mtimes."""
    out = tmp_path_factory.mktemp("resume") / "st"
    first = stability.run_stability(blobs, StabilityConfig(k="2-3", **SMALL), out)
    mtimes = {path: path.stat().st_mtime_ns for path in (out / "per_k").rglob("*") if path.is_file()}
    second = stability.run_stability(blobs, StabilityConfig(k="2-4", **SMALL), out)
    return first, second, mtimes


def saved_labels(out) -> dict[str, np.ndarray]:
    """ids, and k=05 [seeds, n] for every k of the sweep in ``out``."""
    ks = read_manifest(out)["k"]
    return {"ids": read_labels(out, ks[0])[0], **{f"k={k:02d}": read_labels(out, k)[1] for k in ks}}


def test_the_planted_k_is_the_most_stable(blob_sweep):
    summary = pd.read_csv(blob_sweep.out / "summary.csv")
    assert summary["k"].tolist() == [2, 3, 4, 5]
    planted = summary.set_index("k").loc[PLANTED_K]
    assert summary.loc[summary["ari_mean"].idxmax(), "k"] == PLANTED_K
    assert planted["ari_mean"] == planted["subsample_ari_mean"] == planted["acc_mean"] == 1.0


@pytest.mark.parametrize("clusterer", CLUSTERERS)
def test_the_planted_k_is_the_most_stable_under_every_clusterer(blobs, clusterer):
    results = sweep_scores.sweep_sequential(blobs.X, StabilityConfig(k="2-5", clusterer=clusterer, **SMALL),
                                            blobs.classes)
    ari = {k: sweep_scores.summary_row(result)["ari_mean"] for k, result in results.items()}
    assert max(ari, key=ari.get) == PLANTED_K and ari[PLANTED_K] == 1.0


def test_a_rerun_computes_only_the_missing_k(resumed_sweep):
    first, second, mtimes = resumed_sweep
    assert (first.computed, second.computed, second.skipped) == ([2, 3], [4], [2, 3])
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes
    assert pd.read_csv(second.out / "summary.csv")["k"].tolist() == [2, 3, 4]
    assert sorted(pd.read_csv(second.out / "runs.csv")["k"].unique()) == [2, 3, 4]
    assert not (second.out / ".tmp").exists()


def test_the_same_seeds_give_the_same_results(blob_sweep, resumed_sweep):
    _, resumed, _ = resumed_sweep
    once, again = saved_labels(blob_sweep.out), saved_labels(resumed.out)
    for key in ("ids", "k=02", "k=03", "k=04"):
        np.testing.assert_array_equal(once[key], again[key])
    runs_once = pd.read_csv(blob_sweep.out / "runs.csv").query("k <= 4").reset_index(drop=True)
    pd.testing.assert_frame_equal(runs_once, pd.read_csv(resumed.out / "runs.csv"))


def test_the_sequential_loop_does_what_the_tune_trials_do(blobs, blob_sweep):
    config = StabilityConfig(k="2-5", **SMALL)
    # One thread, as each trial on 2 CPUs: OpenMP's partial sums on 2 threads round differently.
    with threadpool_limits(1):
        sequential = sweep_scores.sweep_sequential(blobs.X, config, blobs.classes)
    sizes = pd.read_csv(blob_sweep.out / "clusters.csv").groupby("k")["size"].apply(list)
    for k, result in sequential.items():
        assert [size for size in result.sizes if size] == sizes[k]
    rows = pd.DataFrame([sweep_scores.summary_row(result) for result in sequential.values()])
    pd.testing.assert_frame_equal(rows.drop(columns="seconds"), blob_sweep.summary.drop(columns="seconds"))


def test_results_of_another_table_or_settings_are_refused(blobs, resumed_sweep):
    _, resumed, _ = resumed_sweep
    with pytest.raises(OutputExistsError, match="seeds=4 \\(now 3\\).*--overwrite"):
        stability.plan_sweep(blobs, StabilityConfig(k="2-4", **{**SMALL, "seeds": 3}), resumed.out)
    other = sweep_scores.sweep_data(blobs.X[::-1], classes=blobs.classes[::-1])
    config = StabilityConfig(k="2-4", **SMALL)
    with pytest.raises(OutputExistsError, match="another feature table"):
        stability.plan_sweep(other, config, resumed.out)
    assert stability.plan_sweep(other, config, resumed.out, overwrite=True).todo == [2, 3, 4]


def test_a_transform_is_fitted_once_and_the_sweep_compares_with_other_runs(blobs, resumed_sweep, tmp_path,
                                                                         monkeypatch):
    _, resumed, _ = resumed_sweep
    fits = []
    fit_transform = sweep_scores.fit_transform
    monkeypatch.setattr(sweep_scores, "fit_transform", lambda *a, **kw: fits.append(a[1]) or fit_transform(*a, **kw))
    options = {**SMALL, "transform": "standardize,pca", "pca_components": 3, "clusterer": "gmm",
               "compare_runs": str(resumed.out)}
    out = tmp_path / "st"
    stability.run_stability(blobs, StabilityConfig(k="2-3", **options), out)
    stability.run_stability(blobs, StabilityConfig(k="2-4", **options), out)
    assert fits == [["standardize", "pca"]]  # the second run reused OUT/transformed.npy
    assert np.load(out / "transformed.npy").shape == (len(blobs.X), 3)
    with threadpool_limits(1):
        sequential = sweep_scores.sweep_sequential(blobs.X, StabilityConfig(k="4", **options), blobs.classes)
    swept = pd.read_csv(out / "summary.csv").set_index("k").loc[4]
    expected = sweep_scores.summary_row(sequential[4])
    assert [swept[name] for name in ("ari_mean", "acc_mean", "inertia_mean")] == pytest.approx(
        [expected[name] for name in ("ari_mean", "acc_mean", "inertia_mean")])
    # Both sweeps recover the planted blobs at k=4: their partitions agree, point by point.
    representation = pd.read_csv(out / "representation.csv").set_index("k")
    assert list(representation.index) == [2, 3, 4]
    assert representation.loc[4, ["ari_mean", "ari_min"]].tolist() == [1.0, 1.0]
    assert representation.loc[4, "n_pairs"] == SMALL["seeds"] ** 2
    with pytest.raises(ValueError, match="has no sweep of k=5"):
        stability.plan_sweep(blobs, StabilityConfig(k="2-5", **options), out)


# --- the jobs on the real tiny feature table ---------------------------------------------------


TINY_SAMPLE = 600  # of the tiny table's 1,000 rows: the fits see a sample, the Ray Data pass every row


@pytest.fixture(scope="module")
def tiny_sweep(ray_session, tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "stability"
    stability_job.main(["--features", str(tiny_features), "--out", str(out), "--k", "2-4", "--seeds", "3",
                        "--resamples", "2", "--silhouette-sample", "300", "--sample-size", str(TINY_SAMPLE)])
    return out


def test_a_sampled_sweep_fits_on_its_sample_and_assigns_every_row(tiny_sweep, tiny_features):
    manifest = read_manifest(tiny_sweep)
    assert manifest["n_points"] == 1000 and 500 < manifest["sample_rows"] < 700  # a hash filter, not an exact count
    sample = sweep_scores.load_sweep_data(tiny_features, TINY_SAMPLE)
    assert len(sample.X) == manifest["sample_rows"] and sample.fingerprint == manifest["fingerprint"]
    features, table = read_features(tiny_features), pd.read_parquet(tiny_sweep / "assignments")
    for _, rows in table.groupby("k"):  # every row once per k
        np.testing.assert_array_equal(np.sort(rows["id"]), features.ids)
    # The scores over every row of the sampled fits are those of fits on every row, within noise.
    with threadpool_limits(1):
        whole = sweep_scores.sweep_sequential(features.X, StabilityConfig(k="2-4", seeds=3, resamples=0),
                                              features.labels)
    swept = pd.read_csv(tiny_sweep / "summary.csv").set_index("k")
    for k, result in whole.items():
        assert swept.loc[k, "acc_mean"] == pytest.approx(np.mean([run["acc"] for run in result.runs]), abs=0.06)


def test_the_stability_job_writes_every_output(tiny_sweep):
    summary = pd.read_csv(tiny_sweep / "summary.csv")
    assert summary["k"].tolist() == [2, 3, 4]
    for column in ("ari_mean", "ari_std", "ami_mean", "ami_std", "hungarian_mean", "hungarian_std",
                   "bootstrap_jaccard_mean", "subsample_ari_mean", "subsample_ari_std", "acc_mean", "acc_std",
                   "nmi_mean", "nmi_std", "class_ari_mean", "class_ari_std", "inertia_mean", "silhouette_mean"):
        assert summary[column].notna().all(), column
    runs = pd.read_csv(tiny_sweep / "runs.csv")
    assert list(runs.columns) == ["k", "seed", "inertia", "silhouette", "acc", "nmi", "ari"]
    assert len(runs) == 3 * 3
    assert runs[["acc", "nmi", "ari"]].stack().between(0, 1).all()
    clusters = pd.read_csv(tiny_sweep / "clusters.csv")
    assert clusters.groupby("k")["size"].sum().eq(1000).all() and clusters["verdict"].notna().all()
    labels = saved_labels(tiny_sweep)
    assert labels["k=03"].shape == (3, 1000) and labels["k=03"].dtype == np.int32 and len(labels["ids"]) == 1000
    contingency = pd.read_csv(tiny_sweep / "contingency" / "k=04.csv", index_col="class")
    assert contingency.shape == (10, 4) and contingency.to_numpy().sum() == 1000
    pngs = sorted(path.name for path in (tiny_sweep / "plots").iterdir())
    assert pngs == ["classes_k=02.png", "cluster_jaccard.png", "stability_vs_k.png"]
    assert all((tiny_sweep / "plots" / name).read_bytes()[:4] == PNG_MAGIC for name in pngs)


def test_the_recluster_job_groups_the_classes(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "recluster"
    recluster_job.main(["--stability", str(tiny_sweep), "--out", str(out), "--k", "2", "--k-re", "2"])
    assert capsys.readouterr().out.startswith("featurelens recluster: k=2 → {")
    groups = json.loads((out / "groups.json").read_text())
    assert (groups["method"], groups["k"], groups["k_re"], groups["n_seeds"]) == ("membership", 2, 2, 3)
    class_names = json.loads((tiny_sweep / "sweep.json").read_text())["class_names"]
    partition = [name for group in groups["partition"]["groups"] for name in group]
    assert sorted(partition) == sorted(class_names) and len(groups["partition"]["groups"]) == 2
    recurring = [name for group in groups["groups"] for name in group["classes"]]
    assert len(recurring) == len(set(recurring)) and all(group["share"] >= 0.5 for group in groups["groups"])
    co_assignment = pd.read_csv(out / "co_assignment.csv", index_col="class")
    assert co_assignment.shape == (10, 10) and np.allclose(np.diag(co_assignment), 1)
    assert pd.read_csv(out / "classes.csv").columns[:4].tolist() == ["class", "group", "count", "membership_0"]
    assert all((out / "plots" / name).read_bytes()[:4] == PNG_MAGIC for name in ("membership.png", "co_assignment.png"))


def run_failing(main, argv, capsys) -> str:
    """Run a job that must fail; its exit status and its one line of error."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1, error
    return error


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--k", "2", "--k-re", "10"], "k_re=10"), (["--k", "3", "--method", "seed"], "method='seed'.* k=3 ")],
)
def test_degenerate_regroupings_fail_in_one_line(tiny_sweep, tmp_path, capsys, flags, message):
    argv = ["--stability", str(tiny_sweep), "--out", str(tmp_path / "re"), *flags]
    error = run_failing(recluster_job.main, argv, capsys)
    assert error.startswith("featurelens recluster: error:") and re.search(message, error), error
    assert not (tmp_path / "re").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--k", "1"], "k must be >= 2"), (["--k", "1001"], "k=1001 is more than the 1000 rows"),
     (["--seeds", "0"], "seeds must be >= 1"), (["--features", "/nonexistent/features"], "/nonexistent/features")],
)
def test_the_stability_job_refuses_bad_input_in_one_line(tiny_features, tmp_path, capsys, flags, message):
    argv = ["--features", str(tiny_features), "--out", str(tmp_path / "st"), *flags]
    error = run_failing(stability_job.main, argv, capsys)
    assert error.startswith("featurelens stability: error:") and message in error, error
    assert not (tmp_path / "st").exists()


# --- findings, assignments and the heatmap's k --------------------------------------------------


def test_the_sweep_writes_its_findings_with_the_planted_k(blob_sweep):
    findings = json.loads((blob_sweep.out / "findings.json").read_text())
    assert findings["recommended_k"] == PLANTED_K and findings["reason"].startswith(f"k = {PLANTED_K} is the largest")
    assert findings["bootstrap"] == {"protocol": "clusterboot", "resamples": SMALL["resamples"]}
    assert [entry["k"] for entry in findings["per_k"]] == [2, 3, 4, 5]
    planted = next(entry for entry in findings["per_k"] if entry["k"] == PLANTED_K)
    assert planted["all_stable"] and len(planted["clusters"]) == PLANTED_K
    for cluster in planted["clusters"]:
        assert cluster["size"] == 60 and cluster["jaccard"] == 1.0 and cluster["jaccard_se"] == 0.0
        assert (cluster["verdict"], cluster["purity"]) == ("highly stable", 1.0)
    clusters = pd.read_csv(blob_sweep.out / "clusters.csv")
    assert {"bootstrap_jaccard", "bootstrap_jaccard_se"} <= set(clusters.columns)
    assert clusters["bootstrap_jaccard_se"].notna().all()


def test_the_assignments_are_readable_with_plain_pandas(blob_sweep, blobs):
    table = pd.read_parquet(blob_sweep.out / "assignments")
    assert list(table.columns) == ["id", "path", "k", "cluster", "seed_clusters"]
    assert len(table) == 4 * len(blobs.ids) and table["path"].isna().all()  # arrays have no files
    labels = saved_labels(blob_sweep.out)
    for k, rows in table.sort_values("id").groupby("k"):
        np.testing.assert_array_equal(rows["id"], blobs.ids)
        np.testing.assert_array_equal(rows["cluster"], labels[f"k={k:02d}"][0])
        np.testing.assert_array_equal(np.vstack(rows["seed_clusters"]).T, labels[f"k={k:02d}"])


def test_the_heatmap_is_drawn_at_the_number_of_classes_or_the_configured_k(blob_sweep):
    assert "classes_k=04.png" in {path.name for path in (blob_sweep.out / "plots").iterdir()}  # 4 classes swept
    assert stability.heatmap_k(StabilityConfig(k="2-5", heatmap_k=3), n_classes=4) == 3
    assert stability.heatmap_k(StabilityConfig(k="2-5"), n_classes=4) == 4
    assert stability.heatmap_k(StabilityConfig(k="2-5"), n_classes=40) == 2  # not swept: the smallest k


def test_the_stability_job_runs_on_any_embedding_table_with_paths(ray_session, tmp_path, capsys):
    """A table written by plain pyarrow, 64 wide, with only id, feature and path: no model, no labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, _ = make_blobs(n_samples=150, n_features=64, centers=3, random_state=2)
    feature = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).ravel()), 64)
    paths = [f"img/{i}.png" for i in range(150)]
    pq.write_table(pa.table({"id": pa.array(np.arange(150) * 10, pa.int64()), "feature": feature, "path": paths}),
                   tmp_path / "mine.parquet")
    out = tmp_path / "st"
    stability_job.main(["--features", str(tmp_path / "mine.parquet"), "--out", str(out), "--k", "2-4",
                        "--seeds", "2", "--resamples", "5", "--silhouette-sample", "100"])
    assert "computed 3 k, reused 0; recommended k=3 (runner-up " in capsys.readouterr().out
    findings = json.loads((out / "findings.json").read_text())
    assert findings["recommended_k"] == 3 and findings["labels"] is False
    assert "dominant_class" not in findings["per_k"][0]["clusters"][0]
    table = pd.read_parquet(out / "assignments").sort_values("id")
    assert table.query("k == 3")["path"].tolist() == paths and table["id"].max() == 1490


def test_attributes_come_from_a_csv_by_id_and_from_a_path_pattern(tmp_path):
    data = sweep_scores.sweep_data(np.zeros((3, 2)), ids=[5, 6, 7], paths=["a/s1/1.png", "a/s10/2.png", None])
    (tmp_path / "by_id.csv").write_text("id,liked\n6,yes\n5,no\n99,yes\n")
    config = StabilityConfig(k="2", attributes=str(tmp_path / "by_id.csv"), attribute_pattern=r"/s(?P<person>\d+)/")
    assert stability.load_attributes(config, data.ids, data.paths) == {"person": ["1", "10", None],
                                                                     "liked": ["no", "yes", None]}
    (tmp_path / "by_path.csv").write_text("path,liked\na/s10/2.png,yes\n")
    assert stability.load_attributes(StabilityConfig(k="2", attributes=str(tmp_path / "by_path.csv")),
                                     data.ids, data.paths) == {"liked": [None, "yes", None]}


@pytest.mark.parametrize(("csv", "message"), [
    (None, "no file"), ("name,liked\nx,yes\n", "needs a path or id column"),
    ("id,liked\n5,a\n5,b\n", "lists id 5 twice"), ("id,liked\n1,a\n", "no id of .* matches"),
])
def test_a_bad_attributes_file_is_refused_before_the_sweep(tmp_path, csv, message):
    data = sweep_scores.sweep_data(np.zeros((6, 2)), ids=np.arange(5, 11))
    if csv is not None:
        (tmp_path / "a.csv").write_text(csv)
    config = StabilityConfig(k="2", seeds=1, resamples=0, attributes=str(tmp_path / "a.csv"))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        stability.plan_sweep(data, config, tmp_path / "st")
    with pytest.raises(ValueError, match="needs a feature table with a path column"):
        stability.load_attributes(StabilityConfig(k="2", attribute_pattern="(?P<a>x)"), data.ids, data.paths)
    with pytest.raises(ValueError, match="no named group"):
        StabilityConfig(attribute_pattern="s[0-9]+")


def test_the_pipeline_draws_the_class_heatmap_at_its_reclustering_k(monkeypatch, tmp_path):
    """The fashion-mnist-n2d preset re-clusters k=10: its heatmap must be of k=10, not the default 8."""
    from pipelines import pipeline
    from pipelines.config import ReclusterConfig

    swept = []

    class Outcome:
        def line(self) -> str:
            return "swept"

    monkeypatch.setattr(stability, "run_stability", lambda data, config, out: swept.append(config) or Outcome())
    monkeypatch.setattr(sweep_scores, "load_sweep_data", lambda path, sample_size: None)
    for recluster_k, configured, drawn in ((10, None, 10), (4, 6, 6)):  # a configured heatmap_k stays
        config = pipeline.PipelineConfig(stability=StabilityConfig(k="2-10", heatmap_k=configured),
                                         recluster=ReclusterConfig(k=recluster_k))
        assert pipeline.run_stability_stage(tmp_path, config) == "swept"
        assert swept[-1].heatmap_k == drawn


def test_the_class_heatmap_lists_the_classes_in_natural_order(monkeypatch, tmp_path):
    from pipelines import plots

    X, y = make_blobs(n_samples=60, n_features=3, centers=3, random_state=0)
    data = sweep_scores.sweep_data(X, classes=y, class_names=["s1", "s10", "s2"])
    config = StabilityConfig(k="3", seeds=1, resamples=2, silhouette_sample=50)
    drawn = {}
    monkeypatch.setattr(plots, "heatmap", lambda values, rows, *args, **kwargs: drawn.setdefault("rows", rows))
    with threadpool_limits(1):
        result = sweep_scores.sweep_sequential(data.X, config, data.classes)[3]
    stability.write_outputs(tmp_path, data, config, [result])
    assert drawn["rows"] == ["s1", "s2", "s10"]


def test_a_k_above_the_distinct_points_of_a_bootstrap_is_refused_before_the_sweep():
    """clusterboot refits on the distinct drawn points (about 63% of them): 64 rows leave 39 for k = 40."""
    with pytest.raises(ValueError, match=r"k=40 is more than the 39 distinct points of a bootstrap resample"):
        stability.check_k_fits(StabilityConfig(k="2-40", resamples=3), 64, 64)
    stability.check_k_fits(StabilityConfig(k="2-40", resamples=3, bootstrap="duplicates"), 64, 64)


def test_the_recluster_stage_names_class_groups_in_natural_order():
    from pipelines.recluster import names_of

    assert names_of([0, 1, 2], np.array([0, 1, 2]), ["s10", "s2", "s1"]) == ["s1", "s2", "s10"]
