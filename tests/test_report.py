"""The report, findings first, on a run directory built without Ray or a model: someone's own
embeddings of image files (12 people s1..s12 in 4 well-separated groups), swept, reported, and
looked at in headless Chromium at 1,400 x 900."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_limits

from pipelines import stability
from pipelines.config import DataConfig, ReclusterConfig, ReportConfig, StabilityConfig
from pipelines.feature_table import read_features, summarize_features
from pipelines.pipeline import PipelineConfig
from pipelines.report import build_report, class_counts
from pipelines.rundir import read_labels, read_prototypes, stage_dir
from pipelines.sweep_scores import fit_k, load_sweep_data
from pipelines.transforms import FittedTransform

GROUPS, PEOPLE, PER_PERSON, NEAREST = 4, 12, 10, 3
REPORT_SECTIONS = ["Findings: k = 4", "Cluster stability in detail", "Class re-clustering", "Data",
                   "Run configuration and bookkeeping"]


def write_embeddings(folder) -> None:
    """id, feature (16 wide), label, label_name and path, by plain pyarrow; PNG files behind the paths."""
    n = PEOPLE * PER_PERSON
    X, group = make_blobs(n_samples=n, n_features=16, centers=GROUPS, cluster_std=1.0, center_box=(-20, 20),
                          random_state=4)
    person = np.empty(n, dtype=int)
    for blob in range(GROUPS):  # three people per group, ten images each
        members = np.flatnonzero(group == blob)
        person[members] = blob * (PEOPLE // GROUPS) + np.arange(len(members)) % (PEOPLE // GROUPS)
    names = sorted(f"s{p + 1}" for p in range(PEOPLE))  # string order, as a folder listing gives: s1, s10, ...
    label = np.array([names.index(f"s{p + 1}") for p in person])
    (folder / "images").mkdir(parents=True)
    paths = []
    for row in range(n):
        path = folder / "images" / f"{row}.png"
        Image.fromarray(np.full((12, 10), 20 * group[row], dtype=np.uint8)).save(path)
        paths.append(str(path))
    feature = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).ravel()), 16)
    (folder / "features").mkdir()
    pq.write_table(pa.table({"id": pa.array(np.arange(n), pa.int64()), "feature": feature,
                             "label": pa.array(label, pa.int64()), "label_name": [names[i] for i in label],
                             "path": paths}), folder / "features" / "part-0.parquet")
    # A made-up "liked" answer for two of the groups (the rest unanswered), and a numeric score.
    liked = np.select([group == 0, group == 1], ["yes", "no"], "")
    pd.DataFrame({"path": paths, "liked": liked, "score": 10 * group + person % 3}).to_csv(
        folder / "answers.csv", index=False)


def write_sweep(run_dir, config: StabilityConfig) -> None:
    """The stability stage's files, computed in this process (the Tune path is tested elsewhere)."""
    data = load_sweep_data(stage_dir(run_dir, "extract"))
    plan = stability.plan_sweep(data, config, stage_dir(run_dir, "stability"))
    with threadpool_limits(1):
        fits = {k: fit_k(data.X, k, config) for k in config.k_values}
    stability.assign_rows(plan, FittedTransform(), data.X, fits)  # in memory: the sample is the whole table
    results = [stability.load_k_result(plan.out, k) for k in config.k_values]
    stability.write_outputs(plan.out, data, config, results)


@pytest.fixture(scope="module")
def report_build(tmp_path_factory, file_opens):
    """(run directory, opens of each image file while the report was built)."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    write_embeddings(run_dir)
    attributes = run_dir / "answers.csv"
    config = PipelineConfig(data=DataConfig(dataset="images", data_dir=str(run_dir / "images")),
                            stability=StabilityConfig(k="2-6", seeds=2, resamples=10, silhouette_sample=100,
                                                      attributes=str(attributes)),
                            recluster=ReclusterConfig(k=2, k_re=2), report=ReportConfig(nearest=NEAREST))
    write_sweep(run_dir, config.stability)
    recluster = stage_dir(run_dir, "recluster")
    recluster.mkdir()  # a re-clustering in which no group of classes recurred
    (recluster / "groups.json").write_text(json.dumps({"method": "membership", "k": 2, "k_re": 2, "n_seeds": 2,
                                                       "min_share": 0.5, "groups": []}))
    with file_opens(run_dir / "images") as opens:
        build_report(run_dir, config)
    return run_dir, opens


@pytest.fixture(scope="module")
def report_run(report_build):
    return report_build[0]


def test_the_report_decodes_only_the_images_it_shows_once_each(report_build):
    """The k x nearest images of the pictured k are fetched by id, each file read once: no scan
    of the source (120 files here)."""
    run_dir, opens = report_build
    table = read_features(stage_dir(run_dir, "extract"))
    ids, labels = read_labels(stage_dir(run_dir, "stability"), GROUPS)
    nearest, centroids = read_prototypes(stage_dir(run_dir, "stability"), GROUPS)
    for cluster, members in enumerate(nearest):  # the sweep kept, per cluster, the images nearest its centre
        inside = table.X[labels[0] == cluster]
        np.testing.assert_allclose(centroids[cluster], inside.mean(axis=0), rtol=1e-5, atol=1e-6)
        distance = ((table.X[np.searchsorted(ids, members)] - centroids[cluster]) ** 2).sum(axis=1)
        assert len(members) == min(16, len(inside)) and (np.diff(distance) > -1e-3).all()
    shown = {f"{image_id}.png" for members in nearest for image_id in members[:NEAREST]}
    assert len(shown) == GROUPS * NEAREST and dict(opens) == {name: 1 for name in shown}


def test_the_report_leads_with_the_recommended_k_and_a_card_per_cluster(report_run):
    findings = json.loads((stage_dir(report_run, "stability") / "findings.json").read_text())
    assert findings["recommended_k"] == GROUPS
    text = (report_run / "report" / "report.md").read_text()
    assert text.index("## Findings: k = 4") < text.index("## Cluster stability in detail")
    assert f"Recommended k = {GROUPS}: {GROUPS} of its {GROUPS} clusters are stable" in text
    assert "![The features on their first two principal components (120 images), coloured by cluster at k = 4]" \
        "(embedding_k04.png)" in text
    cards = re.findall(r"^- \*\*Cluster (\d)\*\* \((.*?)\): (.*)$", text, flags=re.M)
    assert [card[0] for card in cards] == ["0", "1", "2", "3"]
    assert all(verdict == "highly stable" and "30 images" in facts for _, verdict, facts in cards)
    assert all("bootstrap Jaccard 1.00 ± 0.00" in facts and "(33% of its labelled images)" in facts
               for _, _, facts in cards)


def test_every_section_is_there_and_every_table_is_whole(report_run):
    text = (report_run / "report" / "report.md").read_text()
    assert re.findall(r"^## (.*)$", text, flags=re.M) == REPORT_SECTIONS
    # Every row of a table has its header's columns: a "|" inside a cell is escaped.
    for table in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(widths) == 1, table


def test_classes_are_in_natural_order(report_run):
    counts = class_counts(summarize_features(stage_dir(report_run, "extract")))
    assert counts["class"].tolist() == [f"s{p}" for p in range(1, PEOPLE + 1)]
    text = (report_run / "report" / "report.md").read_text()
    assert text.index("| s2 |") < text.index("| s10 |")


def test_an_empty_class_grouping_is_said_in_words(report_run):
    text = (report_run / "report" / "report.md").read_text()
    assert "No group of classes recurs in at least 50% of the seeds" in text
    assert "Class groups and the share of seeds" not in text


def test_fewer_nearest_images_than_eight_make_cards_without_a_model(report_run):
    strips = sorted((report_run / "report").glob("cluster_k04_*.png"))
    assert len(strips) == GROUPS and all(path.read_bytes()[:4] == b"\x89PNG" for path in strips)
    assert "the 3 real images nearest" in (report_run / "report" / "report.md").read_text()


def test_the_clusters_holding_the_liked_images_are_named_with_adjusted_p_values(report_run):
    findings = json.loads((stage_dir(report_run, "stability") / "findings.json").read_text())
    assert findings["attributes"] == ["liked", "score"]
    clusters = next(entry for entry in findings["per_k"] if entry["k"] == GROUPS)["clusters"]
    enriched = {(cluster["cluster"], test["attribute"], test["value"]): test
                for cluster in clusters for test in cluster["enriched"]}
    assert len(enriched) == 2 and {key[2] for key in enriched} == {"yes", "no"}
    assert all(test["count"] == test["cluster_size"] == 30 and test["p_adjusted"] < 1e-6 for test in enriched.values())
    assert sorted(mean for cluster in clusters for mean in cluster["attribute_means"].values()) == [1, 11, 21, 31]
    text = (report_run / "report" / "report.md").read_text()
    liked = next(key[0] for key in enriched if key[2] == "yes")
    assert f"Enriched in liked = yes (Benjamini-Hochberg adjusted p ≤ 0.05): cluster {liked} (highly stable)." in text
    assert "enriched in liked = yes: 30 of 30" in text and "adjusted p = " in text


def open_in_chromium(path, width: int = 1400, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_window_size(width, height)
    driver.get(path.as_uri())
    return driver


def test_the_first_screen_shows_the_findings_not_the_configuration(report_run):
    driver = open_in_chromium(report_run / "report" / "report.html")
    try:
        viewport = driver.execute_script("return window.innerHeight")
        recommendation = driver.find_element("id", "recommendation")
        assert "Recommended k = 4" in recommendation.text
        assert driver.execute_script("return arguments[0].getBoundingClientRect().bottom", recommendation) <= viewport
        first_card = driver.find_element("css selector", ".card")
        assert driver.execute_script("return arguments[0].getBoundingClientRect().top", first_card) < viewport
        config_table = driver.find_elements("css selector", "details table")
        assert config_table and not any(table.is_displayed() for table in config_table)  # collapsed
        assert [h.text for h in driver.find_elements("tag name", "h2")] == REPORT_SECTIONS
        for image in driver.find_elements("tag name", "img"):  # every figure decoded and laid out
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
        widest = driver.execute_script(
            "return Math.max(...[...document.querySelectorAll('body > *, section > *, .card, .scroll')]"
            ".map(e => e.getBoundingClientRect().width))")
        assert widest <= 1000
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400
    finally:
        driver.quit()


# --- a real run: Fashion-MNIST with the trained autoencoder, whose decoder renders the centroids ---


@pytest.fixture(scope="module")
def fashion_run(tiny_run, tiny_features, tmp_path_factory):
    """The shared tiny training run and its feature table, swept in-process and reported."""
    import shutil

    run_dir = tmp_path_factory.mktemp("fashion-report") / "run"
    shutil.copytree(tiny_run, stage_dir(run_dir, "train"))
    shutil.copytree(tiny_features, stage_dir(run_dir, "extract"))
    config = PipelineConfig(data=DataConfig(limit=1000), stability=StabilityConfig(k="2-4", seeds=2, resamples=4),
                            recluster=ReclusterConfig(k=2, k_re=2), report=ReportConfig(nearest=5))
    write_sweep(run_dir, config.stability)
    build_report(run_dir, config)
    return run_dir


def test_a_fashion_mnist_report_shows_decoded_prototypes_and_the_findings_first(fashion_run):
    findings = json.loads((stage_dir(fashion_run, "stability") / "findings.json").read_text())
    text = (fashion_run / "report" / "report.md").read_text()
    k = findings["recommended_k"] or 2
    assert f"## Findings: k = {k}" in text and "the decoded centroid, then the 5 real images nearest" in text
    assert len(list((fashion_run / "report").glob(f"cluster_k{k:02d}_*.png"))) == k
    assert "## Training" in text and text.index("## Training") < text.index("## Run configuration and bookkeeping")
    driver = open_in_chromium(fashion_run / "report" / "report.html")
    try:
        recommendation = driver.find_element("id", "recommendation")
        assert driver.execute_script("return arguments[0].getBoundingClientRect().bottom",
                                     recommendation) <= driver.execute_script("return window.innerHeight")
        assert not any(table.is_displayed() for table in driver.find_elements("css selector", "details table"))
    finally:
        driver.quit()
