"""The run report: ``report.html`` (self-contained, images embedded) and ``report.md``.

Findings first: the recommended k and why, how many of its clusters are real, and one card per
cluster (what it looks like, how big, how stable, which class it holds); then the figures and
tables behind them; the configuration and bookkeeping last, collapsed. It reads only what the
stages left in the run directory (never the whole feature matrix: the sweep kept each cluster's
centroid and nearest ids), plus the images it shows, so it can be rebuilt at any time
(``--from report``). Without a trained model (a table of someone else's embeddings) the cards
show real images only."""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import plots
from pipelines.assignment import in_sample
from pipelines.feature_table import read_rows, summarize_features
from pipelines.config import natural_key
from pipelines.rundir import (
    FINDINGS_FILE,
    CLUSTERS_FILE,
    GROUPS_FILE,
    MODEL_FILE,
    REPORT_HTML,
    REPORT_MD,
    REPRESENTATION_FILE,
    STAGES_FILE,
    SUMMARY_FILE,
    TRANSFORMED,
    read_labels,
    read_manifest,
    read_metrics,
    read_prototypes,
    stage_dir,
)
from pipelines.storage import write_text_atomic

VERDICT_COLOURS = {"highly stable": "#1a7f37", "stable": "#2f9e44", "doubtful": "#b08800",
                   "not to trust": "#d9480f", "dissolved": "#c92a2a"}
PAGE_WIDTH = 1000  # px: nothing in the report is wider; wide tables scroll inside their box
STRIP_COLUMNS = 3  # images per row of a cluster's card: three cards side by side fit the page


@dataclass
class Card:
    """One cluster: a strip of images, a title, and facts in words."""

    title: str
    verdict: str | None
    facts: list[str]
    image: Path | None = None


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list)
    collapsed: bool = False  # drawn inside a closed <details>
    anchor: str | None = None  # the id of the section's first paragraph


# --- cluster prototypes and images -----------------------------------------------------------------


def decode(model, codes: np.ndarray) -> np.ndarray:
    """Codes [k, d] -> images [k, C, H, W] in [0, 1], as the decoder renders them."""
    import torch

    with torch.no_grad():
        return model.decoder(torch.from_numpy(codes.astype(np.float32))).numpy()


def decoded_centroids(run_dir: Path, centroids: np.ndarray) -> np.ndarray | None:
    """The decoder's rendering of the centroids; None without a trained model in the run."""
    model_dir = stage_dir(run_dir, "train")
    if not (model_dir / MODEL_FILE).exists():
        return None
    from pipelines.model import load_model

    model, _ = load_model(model_dir)
    return decode(model, centroids)


def shown_images(run_dir: Path, config, ids: set[int]) -> dict[int, np.ndarray]:
    """Images [C, H, W] in [0, 1] of the ids shown, fetched by id: their paths read from the feature
    table (those rows and columns only), then each file (or source row) decoded alone."""
    import pyarrow.dataset as ds

    from pipelines.data import images_by_id
    from pipelines.feature_table import parquet_files

    table = ds.dataset([str(file) for file in parquet_files(stage_dir(run_dir, "extract"))])
    columns = [name for name in ("id", "path") if name in table.schema.names]
    rows = table.to_table(columns=columns, filter=ds.field("id").isin(sorted(ids))).to_pydict()
    paths = dict(zip(rows["id"], rows.get("path", [None] * len(rows["id"]))))
    return {image_id: as_float_image(image) for image_id, image in images_by_id(config.data, paths).items()}


def as_float_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> float [C, H, W] in [0, 1], as the figures draw images."""
    array = image.astype(np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@dataclass
class Shown:
    """What the report draws from: the table's summary, the findings, per pictured k the ids
    nearest each cluster's centre and the clusters' centroids, and the images shown (fetched once,
    by id: only the images shown are decoded)."""

    run_dir: Path
    config: object
    features: object  # pipelines.feature_table.TableSummary
    findings: dict
    prototypes: dict[int, tuple[list[list[int]], np.ndarray]]  # k -> (ids per cluster, centroids [k, d])
    images: dict[int, np.ndarray] = field(default_factory=dict)  # id -> [C, H, W]


def shown_inputs(run_dir: Path, config) -> Shown:
    features = summarize_features(stage_dir(run_dir, "extract"))
    findings = read_json(stage_dir(run_dir, "stability") / FINDINGS_FILE)
    ks = ([findings_k(findings, config)] if findings else []) + other_prototype_ks(run_dir, config, features)
    prototypes = {k: read_prototypes(stage_dir(run_dir, "stability"), k) for k in ks}
    wanted = {image_id for nearest, _ in prototypes.values() for ids in nearest for image_id in ids[:config.report.nearest]}
    return Shown(run_dir, config, features, findings, prototypes,
                 shown_images(run_dir, config, wanted) if wanted else {})


def prototype_strips(shown: Shown, k: int, name: str) -> list[Path]:
    """Per cluster of k (with points) a strip PNG: the decoded centroid (with a model) and the real
    images nearest its centre."""
    images, out_dir = shown.images, stage_dir(shown.run_dir, "report")
    nearest, centroids = shown.prototypes[k]
    present = [cluster for cluster, ids in enumerate(nearest) if ids]
    rendered = decoded_centroids(shown.run_dir, centroids[present])
    strips = []
    for row_no, cluster in enumerate(present):
        row = [images[image_id] for image_id in nearest[cluster][:shown.config.report.nearest]]
        if rendered is not None:
            row = [rendered[row_no], *row]
        rows = [np.stack(row[start:start + STRIP_COLUMNS]) for start in range(0, len(row), STRIP_COLUMNS)]
        strips.append(plots.image_grid(rows, out_dir / f"{name}_{cluster:03d}.png", [""] * len(rows)))
    return strips


# --- assembling ------------------------------------------------------------------------------------


def image_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


STYLE = f"""
body{{font-family:system-ui,sans-serif;max-width:{PAGE_WIDTH}px;margin:1.5em auto;padding:0 1em;color:#222}}
.scroll{{max-width:100%;max-height:480px;overflow:auto}}
table{{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}th{{background:#f3f3f3}}
figure{{margin:1em 0}}img{{max-width:100%}}figcaption{{font-size:13px;color:#555}}
h2{{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.5em}}
.lead{{font-size:18px}}
.cards{{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:10px}}
.card{{border:1px solid #ddd;border-radius:6px;padding:8px;font-size:13px}}
.card h3{{margin:.2em 0;font-size:15px}}.card p{{margin:.15em 0}}
.verdict{{color:#fff;border-radius:3px;padding:0 5px;font-weight:600}}
details>summary{{cursor:pointer}}details>summary h2{{display:inline}}
"""


def html_card(card: Card) -> str:
    colour = VERDICT_COLOURS.get(card.verdict or "", "#666")
    verdict = f"<span class='verdict' style='background:{colour}'>{html.escape(card.verdict or 'no verdict')}</span>"
    image = f"<img src='{image_data_uri(card.image)}' alt='{html.escape(card.title)}'>" if card.image else ""
    facts = "".join(f"<p>{html.escape(fact)}</p>" for fact in card.facts)
    return f"<div class='card'>{image}<h3>{html.escape(card.title)} {verdict}</h3>{facts}</div>"


def html_section(section: Section) -> str:
    heading = f"<h2>{html.escape(section.title)}</h2>"
    parts = [f"<details><summary>{heading}</summary>" if section.collapsed else heading]
    for number, text in enumerate(section.paragraphs):
        anchor = f" id='{section.anchor}' class='lead'" if number == 0 and section.anchor else ""
        parts.append(f"<p{anchor}>{html.escape(text)}</p>")
    if section.cards:
        parts.append("<div class='cards'>" + "".join(html_card(card) for card in section.cards) + "</div>")
    for caption, path in section.figures:
        parts.append(f"<figure><img src='{image_data_uri(path)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for caption, frame in section.tables:
        table = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
        parts.append(f"<h3>{html.escape(caption)}</h3><div class='scroll'>{table}</div>")
    parts.append("</details>" if section.collapsed else "")
    return "<section>" + "\n".join(parts) + "</section>"


def render_html(title: str, sections: list[Section]) -> str:
    head = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    return "\n".join([head, *(html_section(section) for section in sections), "</body></html>\n"])


def render_markdown(title: str, sections: list[Section], report_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for text in section.paragraphs:
            lines += [text, ""]
        for card in section.cards:
            image = f" ![{card.title}]({os.path.relpath(card.image, report_dir)})" if card.image else ""
            lines += [f"- **{card.title}** ({card.verdict or 'no verdict'}): " + "; ".join(card.facts) + image]
        lines += [""] if section.cards else []
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


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:  # a "|" inside a cell (a partition "{a} | {b}") would end it
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def caption_of(path: Path) -> str:
    return path.stem.replace("_", " ")


# --- findings first ------------------------------------------------------------------------------


def findings_k(findings: dict, config) -> int:
    """The k the cards show: the recommended one, else the re-clustered k when swept, else the first."""
    swept = [entry["k"] for entry in findings["per_k"]]
    if findings.get("recommended_k") is not None:
        return findings["recommended_k"]
    return config.recluster.k if config.recluster.k in swept else swept[0]


def recommendation_text(findings: dict, entry: dict) -> list[str]:
    k, runner_up = findings.get("recommended_k"), findings.get("runner_up")
    if k is None:
        return [findings["reason"], f"Showing k = {entry['k']}, without verdicts."]
    stable = f"{entry['n_stable']} of its {entry['n_clusters']} clusters are stable (bootstrap Jaccard ≥ 0.75)."
    second = f" Runner-up: k = {runner_up}." if runner_up is not None else ""
    return [f"Recommended k = {k}: {stable}{second}", findings["reason"],
            f"Bootstrap: {findings['bootstrap']['resamples']} resamples, protocol {findings['bootstrap']['protocol']}; "
            "a cluster's Jaccard is shown ± its standard error."]


def cluster_card(cluster: dict, image: Path | None) -> Card:
    facts = [f"{cluster['size']:,} images"]
    if cluster["jaccard"] is not None:
        se = f" ± {cluster['jaccard_se']:.2f}" if cluster["jaccard_se"] is not None else ""
        facts.append(f"bootstrap Jaccard {cluster['jaccard']:.2f}{se}")
    if cluster.get("dominant_class") is not None:
        facts.append(f"mostly {cluster['dominant_class']} ({cluster['purity']:.0%} of its labelled images)")
    facts += [f"enriched in {test['attribute']} = {test['value']}: {test['count']} of {test['cluster_size']} "
              f"({test['fold']:.1f}x the base rate, adjusted p = {test['p_adjusted']:.2g})"
              for test in cluster.get("enriched", [])[:3]]
    facts += [f"mean {name} {value:.3g}" for name, value in cluster.get("attribute_means", {}).items()
              if value is not None]
    return Card(f"Cluster {cluster['cluster']}", cluster["verdict"], facts, image)


ATTRIBUTE_VALUES_NAMED = 4  # an attribute with more enriched values gets one summary sentence


def attribute_sentences(entry: dict) -> list[str]:
    """Per attribute, the clusters enriched in each of its values and their verdicts (which stable
    clusters hold the liked faces); one sentence per attribute with many values (a person's number)."""
    holders: dict[str, dict[str, list[str]]] = {}
    for cluster in entry["clusters"]:
        for test in cluster.get("enriched", []):
            holders.setdefault(test["attribute"], {}).setdefault(test["value"], []).append(
                f"{cluster['cluster']} ({cluster['verdict'] or 'no verdict'})")
    sentences = []
    for attribute, values in sorted(holders.items()):
        if len(values) > ATTRIBUTE_VALUES_NAMED:
            sentences.append(f"{len(values)} values of {attribute} are each enriched in some cluster "
                             "(Benjamini-Hochberg adjusted p ≤ 0.05); the cards name them.")
            continue
        sentences += [f"Enriched in {attribute} = {value} (Benjamini-Hochberg adjusted p ≤ 0.05): "
                      f"cluster{'s' if len(clusters) > 1 else ''} {', '.join(clusters)}."
                      for value, clusters in sorted(values.items(), key=lambda item: natural_key(item[0]))]
    return sentences


def attribute_table(entry: dict) -> list[tuple[str, pd.DataFrame]]:
    rows = [{"attribute": name, "NMI": value["nmi"], "ARI": value["ari"]}
            for name, value in sorted(entry.get("attributes", {}).items())]
    return [(f"Clusters at k = {entry['k']} against each categorical attribute", pd.DataFrame(rows))] if rows else []


EMBEDDING_POINTS = 20_000  # drawn at most: a denser cloud shows no more


def principal_plane(X: np.ndarray) -> np.ndarray:
    """The points projected on their first two principal components."""
    centred = X - X.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes[:2].T


def embedding_figure(run_dir: Path, k: int) -> tuple[str, Path]:
    """Clustered points in their principal plane, coloured by cluster: how the clusters lie against
    each other. With a transform, the sweep's transformed sample; else up to EMBEDDING_POINTS rows
    of the table, read by id."""
    stability = stage_dir(run_dir, "stability")
    ids, labels = read_labels(stability, k)
    transformed = stability / TRANSFORMED
    if transformed.exists():  # the sample's rows, sorted by id as the assignments are
        points, labels = np.load(transformed), labels[0][in_sample(ids, read_manifest(stability)["sample_share"])]
    else:
        chosen = np.sort(np.random.default_rng(0).permutation(len(ids))[:EMBEDDING_POINTS])
        points, labels = read_rows(stage_dir(run_dir, "extract"), ids[chosen]).X, labels[0][chosen]
    shown = np.random.default_rng(0).permutation(len(points))[:EMBEDDING_POINTS]
    path = plots.embedding_scatter(principal_plane(points[shown].astype(np.float64)), labels[shown],
                                   stage_dir(run_dir, "report") / f"embedding_k{k:02d}.png")
    space = "transformed features" if transformed.exists() else "features"
    return (f"The {space} on their first two principal components ({len(shown):,} images), coloured by "
            f"cluster at k = {k}", path)


def standing_table(findings: dict) -> pd.DataFrame:
    return pd.DataFrame([{"k": entry["k"], "stable clusters": f"{entry['n_stable']} of {entry['n_clusters']}",
                          "least Jaccard": entry["min_jaccard"], "mean Jaccard": entry["mean_jaccard"]}
                         for entry in findings["per_k"]])


def findings_section(shown: Shown) -> Section:
    run_dir, config, findings = shown.run_dir, shown.config, shown.findings
    folder = stage_dir(run_dir, "stability")
    if not findings:
        return Section("Findings", [f"No findings: {folder / FINDINGS_FILE} is missing (rerun --from stability)."])
    k = findings_k(findings, config)
    entry = next(item for item in findings["per_k"] if item["k"] == k)
    strips = prototype_strips(shown, k, f"cluster_k{k:02d}")
    decoded = (stage_dir(run_dir, "train") / MODEL_FILE).exists()
    what = "the decoded centroid, then the" if decoded else "the"
    paragraphs = [*recommendation_text(findings, entry),
                  f"Each card: {what} {config.report.nearest} real images nearest the cluster's centre (seed 0 of the "
                  "sweep). Every image's cluster at every k is in stability/assignments/ (Parquet)."]
    paragraphs += attribute_sentences(entry)
    cards = [cluster_card(cluster, strip) for cluster, strip in zip(entry["clusters"], strips)]
    figure = folder / "plots" / "stability_vs_k.png"
    tables = [*attribute_table(entry), ("Stable clusters per k", standing_table(findings))]
    figures = [embedding_figure(run_dir, k)]
    if figure.exists():
        figures.append(("Agreement between seeds, on subsamples and with the classes, per k", figure))
    return Section(f"Findings: k = {k}", paragraphs, tables, figures, cards, anchor="recommendation")


# --- the details -----------------------------------------------------------------------------------


def run_section(run_dir: Path, config, stage_times: dict) -> Section:
    rows = [(section, name, "(unset)" if value is None else str(value))
            for section, options in config.to_dict().items() for name, value in options.items()]
    times = pd.DataFrame(
        [(stage, info["seconds"], info["summary"]) for stage, info in stage_times.items()],
        columns=["stage", "seconds", "summary"],
    )
    return Section(
        "Run configuration and bookkeeping",
        [f"Run directory {run_dir}; report generated {generated_at()}."],
        [("Wall time per stage", times), ("Resolved config", pd.DataFrame(rows, columns=["section", "option", "value"]))],
        collapsed=True,
    )


def class_counts(features) -> pd.DataFrame:
    """Images per class (of a TableSummary), the classes in natural order (s2 before s10)."""
    present = [index for index, size in enumerate(features.class_sizes) if size > 0]
    order = sorted(present, key=lambda index: natural_key(features.class_names[index]))
    return pd.DataFrame({"class": [features.class_names[index] for index in order],
                         "images": [int(features.class_sizes[index]) for index in order]})


def data_section(run_dir: Path, features) -> Section:
    metadata = features.metadata
    history = read_metrics(stage_dir(run_dir, "train"))
    classes = class_counts(features)
    skipped = metadata.get("skipped") or []
    paragraphs = [
        f"Dataset {metadata.get('dataset', '?')}: {history[-1]['train_images'] if history else '?'} training images; "
        f"{features.rows:,} images of the {metadata.get('split', '?')} split encoded to "
        f"{features.width}-d features; image size {metadata.get('image_size', '?')}, "
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


STABILITY_FIGURES = {"cluster_jaccard": "Every cluster's mean bootstrap Jaccard (± standard error) per k, in "
                                        "Hennig's verdict bands",
                     "classes": "Images per class and cluster (seed 0)"}


def stability_section(run_dir: Path, config) -> Section:
    folder = stage_dir(run_dir, "stability")
    tables = [("Stability and agreement with the classes per k", pd.read_csv(folder / SUMMARY_FILE))]
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
    figures = [(figure_caption(path), path) for path in sorted((folder / "plots").glob("*.png"))
               if path.stem != "stability_vs_k"]  # that one is in the findings
    return Section("Cluster stability in detail", paragraphs, tables, figures)


def figure_caption(path: Path) -> str:
    for stem, caption in STABILITY_FIGURES.items():
        if path.stem.startswith(stem):
            return caption + (f", {path.stem.split('_')[-1].replace('=', ' = ')}" if "=" in path.stem else "")
    return caption_of(path)


def recluster_section(run_dir: Path) -> Section:
    folder = stage_dir(run_dir, "recluster")
    groups = json.loads((folder / GROUPS_FILE).read_text())
    paragraphs = [f"Method {groups.get('method')}, k = {groups.get('k')}, k_re = {groups.get('k_re')}, "
                  f"over {groups.get('n_seeds')} clusterer seeds."]
    rows = [(", ".join(sorted(group.get("classes", []), key=natural_key)), group.get("share"))
            for group in groups.get("groups", [])]
    tables = [("Class groups and the share of seeds they recur in",
               pd.DataFrame(rows, columns=["group", "share of seeds"]))] if rows else []
    if not rows:
        paragraphs.append(f"No group of classes recurs in at least {groups.get('min_share', 0.5):.0%} of the seeds: "
                          "the seeds group the classes differently, so no grouping is reported as stable.")
    figures = [(RECLUSTER_FIGURES.get(path.stem, caption_of(path)), path) for path in sorted(folder.rglob("*.png"))]
    return Section("Class re-clustering", paragraphs, tables, figures)


RECLUSTER_FIGURES = {
    "membership": "Share of each class's images in each cluster (seed 0), the classes ordered by group",
    "co_assignment": "Share of the seeds in which two classes fall in the same group",
}


def prototype_section(shown: Shown, ks: list[int]) -> Section:
    """Decoded prototypes at the other k of interest (the findings show the recommended one)."""
    figures = []
    for k in ks:
        strips = prototype_strips(shown, k, f"prototypes_k{k:02d}")
        figures += [(f"k = {k}, cluster {cluster}: decoded centroid, then the {shown.config.report.nearest} nearest "
                     "real images", strip) for cluster, strip in enumerate(strips)]
    return Section("Decoded cluster prototypes at other k",
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


def other_prototype_ks(run_dir: Path, config, features) -> list[int]:
    """The k of prototype_k beside the one the findings picture; decoded only with a model."""
    if not (stage_dir(run_dir, "train") / MODEL_FILE).exists():
        return []
    findings = read_json(stage_dir(run_dir, "stability") / FINDINGS_FILE)
    pictured = findings_k(findings, config) if findings else None
    return [k for k in prototype_ks(config, features) if k != pictured]


def build_report(run_dir: Path, config) -> Path:
    """Assemble report.html and report.md from a finished run directory."""
    run_dir = Path(run_dir)
    shown = shown_inputs(run_dir, config)
    features = shown.features
    sections = [findings_section(shown), stability_section(run_dir, config)]
    if (stage_dir(run_dir, "recluster") / GROUPS_FILE).exists():
        sections.append(recluster_section(run_dir))
    others = other_prototype_ks(run_dir, config, features)
    if others:
        sections.append(prototype_section(shown, others))
    sections.append(data_section(run_dir, features))
    if read_metrics(stage_dir(run_dir, "train")):
        sections.append(training_section(run_dir))
    sections.append(run_section(run_dir, config, read_json(run_dir / STAGES_FILE)))
    title = f"featurelens report: {features.metadata.get('dataset', run_dir.name)}"
    return write_report(run_dir, title, sections)
