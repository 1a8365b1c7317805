"""The run report: ``report.html`` (self-contained, images embedded) and ``report.md``.

It reads only what the stages left in the run directory, plus the images it shows beside the
decoded cluster prototypes, so it can be rebuilt at any time (``--from report``)."""

from __future__ import annotations

import base64
import os
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines import plots
from pipelines.model import load_model
from pipelines.feature_table import read_features
from pipelines.rundir import (
    CLUSTERS_FILE,
    GROUPS_FILE,
    REPORT_HTML,
    REPORT_MD,
    REPRESENTATION_FILE,
    STAGES_FILE,
    SUMMARY_FILE,
    read_labels,
    read_metrics,
    stage_dir,
)
from pipelines.storage import write_text_atomic



@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)


# --- decoded cluster prototypes ------------------------------------------------------------------


def cluster_prototypes(X: np.ndarray, labels: np.ndarray, nearest: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k, d], indices [k, nearest] of the points nearest each centroid).

    A KMeans centroid is the mean of its cluster's points, so the centroids are recomputed from
    the stored labels rather than stored twice; clusters are in label order."""
    clusters = np.unique(labels)
    centroids = np.stack([X[labels == c].mean(axis=0) for c in clusters])
    nearest_rows = []
    for c, centroid in zip(clusters, centroids):
        members = np.flatnonzero(labels == c)
        distances = np.linalg.norm(X[members] - centroid, axis=1)
        nearest_rows.append(members[np.argsort(distances, kind="stable")[:nearest]])
    width = max(len(row) for row in nearest_rows)
    padded = np.full((len(clusters), width), -1)
    for i, row in enumerate(nearest_rows):
        padded[i, : len(row)] = row
    return centroids, padded


@torch.no_grad()
def decode(model, codes: np.ndarray) -> np.ndarray:
    """Codes [k, 512] -> images [k, C, H, W] in [0, 1], as the decoder renders them."""
    return model.decoder(torch.from_numpy(codes.astype(np.float32))).numpy()


def prototype_figure(run_dir: Path, model_dir: Path, features, labels: np.ndarray, images_by_id: dict,
                     k: int, out: Path) -> Path:
    """Each cluster's decoded centroid beside the real images nearest to it: what it looks like."""
    model, _ = load_model(model_dir)
    centroids, nearest = cluster_prototypes(features.X, labels, nearest=8)
    rendered = decode(model, centroids)
    rows, titles = [], []
    for cluster, (prototype, members) in enumerate(zip(rendered, nearest)):
        real = [images_by_id[int(features.ids[i])] for i in members if i >= 0]
        rows.append(np.concatenate([prototype[None], np.stack(real)]))
        size = int(np.sum(labels == np.unique(labels)[cluster]))
        titles.append(f"cluster {cluster} ({size} images): decoded centroid, then the 8 nearest images")
    return plots.image_grid(rows, out, titles, title=f"k = {k}: decoded cluster prototypes")


# --- assembling ------------------------------------------------------------------------------------


def image_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}",
        "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}",
        "h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
        for caption, frame in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>" + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
        for caption, path in section.figures:
            parts.append(
                f"<figure><img src='{image_data_uri(path)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(title: str, sections: list[Section], report_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for text in section.paragraphs:
            lines += [text, ""]
        for caption, frame in section.tables:
            lines += [f"**{caption}**", "", markdown_table(frame), ""]
        for caption, path in section.figures:
            lines += [f"![{caption}]({os.path.relpath(path, report_dir)})", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, title: str, sections: list[Section]) -> Path:
    report_dir = stage_dir(run_dir, "report")
    report_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report_dir / REPORT_MD, render_markdown(title, sections, report_dir))
    write_text_atomic(report_dir / REPORT_HTML, render_html(title, sections))
    return report_dir / REPORT_HTML


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def generated_at() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


# --- the sections of a pipeline run ---------------------------------------------------------------


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:  # a "|" inside a cell (a partition "{a} | {b}") would end it
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def caption_of(path: Path) -> str:
    return path.stem.replace("_", " ")


def run_section(run_dir: Path, config, stage_times: dict) -> Section:
    rows = [(section, name, "(unset)" if value is None else str(value))
            for section, options in config.to_dict().items() for name, value in options.items()]
    times = pd.DataFrame(
        [(stage, info["seconds"], info["summary"]) for stage, info in stage_times.items()],
        columns=["stage", "seconds", "summary"],
    )
    return Section(
        "Run",
        [f"Run directory {run_dir}; report generated {generated_at()}."],
        [("Wall time per stage", times), ("Resolved config", pd.DataFrame(rows, columns=["section", "option", "value"]))],
    )


def data_section(run_dir: Path, features) -> Section:
    metadata = features.metadata
    history = read_metrics(stage_dir(run_dir, "train"))
    counts = pd.Series(features.labels[features.labels >= 0]).value_counts().sort_index()
    classes = pd.DataFrame(
        {"class": [features.class_names[i] for i in counts.index], "images": counts.values}
    ) if len(counts) else pd.DataFrame({"class": [], "images": []})
    skipped = metadata.get("skipped") or []
    paragraphs = [
        f"Dataset {metadata.get('dataset', '?')}: {history[-1]['train_images'] if history else '?'} training images; "
        f"{len(features.ids):,} images of the {metadata.get('split', '?')} split encoded to "
        f"{features.X.shape[1]}-d features; image size {metadata.get('image_size', '?')}, "
        f"color {metadata.get('color', '?')}; {len(features.class_names)} classes.",
        f"Unreadable images skipped: {len(skipped)}." + (" They are listed in the feature table's metadata." if skipped else ""),
    ]
    return Section("Data", paragraphs, [("Images per class (encoded split)", classes)] if len(classes) else [])


def training_section(run_dir: Path) -> Section:
    train_dir = stage_dir(run_dir, "train")
    history = read_metrics(train_dir)
    last = history[-1]
    metrics = pd.DataFrame(history)[[c for c in ("epoch", "train_loss", "test_loss", "test_accuracy", "images_per_s")
                                     if c in history[0] and any(row.get(c) is not None for row in history)]]
    return Section(
        "Training",
        [f"{len(history)} epochs; final test loss {last['test_loss']:.5f}"
         + (f", test accuracy {last['test_accuracy']:.4f}" if last.get("test_accuracy") is not None else "") + "."],
        [("Per epoch", metrics)],
        [("Loss per epoch", train_dir / "loss_curve.png"),
         ("Test images (top) and their reconstructions (bottom)", train_dir / "reconstructions.png")],
    )


def stability_section(run_dir: Path, config) -> Section:
    folder = stage_dir(run_dir, "stability")
    summary = pd.read_csv(folder / SUMMARY_FILE)
    tables = [("Stability and agreement with the classes per k", summary)]
    if (folder / CLUSTERS_FILE).exists():
        tables.append(("Per-cluster bootstrap Jaccard (Hennig's verdicts)", pd.read_csv(folder / CLUSTERS_FILE)))
    stability = config.stability
    paragraphs = [
        f"Clusterer {stability.clusterer} on the features after transform {stability.transform}. "
        "Pairwise ARI/AMI/Hungarian agreement between clusterer seeds, bootstrap Jaccard per cluster "
        "(≤ 0.5 dissolved, < 0.6 not to trust, 0.6–0.75 doubtful, ≥ 0.75 stable, ≥ 0.85 highly stable), "
        "80% subsample ARI, and ACC/NMI/ARI against the classes when labels exist."]
    if (folder / REPRESENTATION_FILE).exists():
        tables.append(("Representation stability: agreement with the partitions of other autoencoders "
                       f"({stability.compare_runs})", pd.read_csv(folder / REPRESENTATION_FILE)))
        paragraphs.append("Representation stability compares this run's partitions with those of autoencoders "
                          "trained with other seeds, point by point: high agreement says the features, not one "
                          "training run's draw, carry the clusters.")
    return Section(
        "Cluster stability",
        paragraphs,
        tables,
        [(caption_of(path), path) for path in sorted((folder / "plots").glob("*.png"))],
    )


def recluster_section(run_dir: Path) -> Section:
    folder = stage_dir(run_dir, "recluster")
    groups = json.loads((folder / GROUPS_FILE).read_text())
    paragraphs = [f"Method {groups.get('method')}, k = {groups.get('k')}, k_re = {groups.get('k_re')}, "
                  f"over {groups.get('n_seeds')} clusterer seeds."]
    rows = [(", ".join(group.get("classes", [])), group.get("share")) for group in groups.get("groups", [])]
    figures = [(caption_of(path), path) for path in sorted(folder.rglob("*.png"))]
    return Section("Class re-clustering", paragraphs,
                   [("Class groups and the share of seeds they recur in", pd.DataFrame(rows, columns=["group", "share of seeds"]))],
                   figures)


def prototype_section(run_dir: Path, config, features) -> Section:
    from pipelines.data import load_images

    ks = prototype_ks(config, features)
    labels_by_k = {k: read_labels(stage_dir(run_dir, "stability"), k)[1][0] for k in ks}
    wanted = set()
    for k, labels in labels_by_k.items():
        _, nearest = cluster_prototypes(features.X, labels, config.report.nearest)
        wanted |= {int(features.ids[i]) for i in nearest.ravel() if i >= 0}
    source = load_images(config.data, config.extract.split)
    rows = source.dataset.filter(lambda row: row["id"] in wanted).take_all()
    from pipelines.model import scale_images

    images_by_id = {int(row["id"]): scale_images(torch.from_numpy(np.array(row["image"]))[None])[0].numpy() for row in rows}
    figures = [
        (f"k = {k}: the decoder renders each KMeans centroid (left) beside the {config.report.nearest} real images nearest to it",
         prototype_figure(run_dir, stage_dir(run_dir, "train"), features, labels_by_k[k], images_by_id, k,
                          stage_dir(run_dir, "report") / f"prototypes_k{k:02d}.png"))
        for k in ks
    ]
    return Section("Decoded cluster prototypes",
                   ["What each cluster looks like: its centroid in feature space, decoded to an image by the "
                    "autoencoder, beside the real images closest to that centroid (seed 0 of the sweep)."],
                   figures=figures)


def prototype_ks(config, features) -> list[int]:
    from pipelines.config import parse_k

    swept = config.stability.k_values
    if config.report.prototype_k != "auto":
        return [k for k in parse_k(config.report.prototype_k) if k in swept]
    wanted = [config.recluster.k, len(features.class_names)]
    return sorted({k for k in wanted if k in swept}) or [swept[0]]


def build_report(run_dir: Path, config) -> Path:
    """Assemble report.html and report.md from a finished run directory."""
    features = read_features(stage_dir(run_dir, "extract"))
    stage_times = read_json(run_dir / STAGES_FILE)
    sections = [run_section(run_dir, config, stage_times), data_section(run_dir, features), training_section(run_dir),
                stability_section(run_dir, config)]
    if (stage_dir(run_dir, "recluster") / GROUPS_FILE).exists():
        sections.append(recluster_section(run_dir))
    sections.append(prototype_section(run_dir, config, features))
    title = f"featurelens report: {features.metadata.get('dataset', run_dir.name)}"
    return write_report(run_dir, title, sections)
