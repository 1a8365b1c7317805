"""Figures of the stages, written as PNG files (the report embeds them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs have no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipelines.storage import atomic_output  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Write atomically, so that a report never embeds a half-written image."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def loss_curve(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train and test loss per epoch (log scale), with test accuracy when the run has it."""
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train loss")
    ax.plot(epochs, [row["test_loss"] for row in history], "s-", label="test loss")
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title=title)
    if any(row.get("test_accuracy") is not None for row in history):
        acc = ax.twinx()
        acc.plot(epochs, [row.get("test_accuracy") for row in history], "^--", color="tab:green", label="test accuracy")
        acc.set_ylabel("test accuracy")
        acc.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def image_grid(rows: list[np.ndarray], path: str | Path, row_titles: list[str], title: str = "") -> Path:
    """Rows of images (each array [n, C, H, W] in [0, 1]) one above the other, as in the seed's
    figure of inputs above their reconstructions."""
    n = max(len(row) for row in rows)
    height, width = rows[0].shape[-2:]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n * width / height, 1.3 * len(rows)), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_titles)):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                image = np.clip(images[c], 0, 1)
                if image.shape[0] == 1:
                    ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image.transpose(1, 2, 0))
        axes[r][0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


# --- cluster stability (pipelines.stability, pipelines.recluster) --------------------------------


def stability_vs_k(summary, path: str | Path, title: str = "") -> Path:
    """Per k (a DataFrame of pipelines.stability.summary_row): agreement between seeds and on
    subsamples, mean ± std; beside it ACC, NMI and ARI against the classes when there are any."""
    with_classes = bool(summary["acc_mean"].notna().any())
    fig, axes = plt.subplots(1, 2 if with_classes else 1, figsize=(11 if with_classes else 6, 3.6), squeeze=False)
    panels = [(axes[0][0], "stability", [("ari", "ARI between seeds"), ("ami", "AMI between seeds"),
                                         ("subsample_ari", "ARI on subsamples")])]
    if with_classes:
        panels.append((axes[0][1], "agreement with classes", [("acc", "ACC"), ("nmi", "NMI"), ("class_ari", "ARI")]))
    positions = np.arange(len(summary))  # k as categories: 2..10 and 40 alike get room
    for ax, ylabel, columns in panels:
        for column, label in columns:
            ax.errorbar(positions, summary[f"{column}_mean"], yerr=summary[f"{column}_std"], marker="o",
                        capsize=3, label=label)
        ax.set(xlabel="k", ylabel=ylabel, ylim=(-0.05, 1.05))
        ax.set_xticks(positions, [str(k) for k in summary["k"]])
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


# Where pipelines.measures.jaccard_verdict changes its verdict.
HENNIG_BOUNDS = (0.5, 0.6, 0.75, 0.85)


def cluster_jaccard(clusters, path: str | Path, title: str = "") -> Path:
    """Every cluster's mean bootstrap Jaccard, one column of dots per k, in Hennig's verdict bands
    (a DataFrame of pipelines.stability.clusters_table)."""
    from pipelines.measures import jaccard_verdict

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ks = sorted(clusters["k"].unique())
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(clusters))
    positions = clusters["k"].map({k: position for position, k in enumerate(ks)}) + jitter  # k as categories
    se = clusters["bootstrap_jaccard_se"] if "bootstrap_jaccard_se" in clusters else None
    ax.errorbar(positions, clusters["bootstrap_jaccard"], yerr=se, fmt="o", ms=4, alpha=0.8, elinewidth=0.8)
    for bound in HENNIG_BOUNDS:
        ax.axhline(bound, color="grey", lw=0.7, ls="--")
    for low, high in zip((0.0, *HENNIG_BOUNDS), (*HENNIG_BOUNDS, 1.0)):
        ax.text(1.01, (low + high) / 2, jaccard_verdict((low + high) / 2), fontsize=7, va="center",
                transform=ax.get_yaxis_transform())
    ax.set(xlabel="k", ylabel="mean bootstrap Jaccard (seed-0 clusters)", ylim=(-0.02, 1.02), title=title)
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def heatmap(values: np.ndarray, row_labels: list, col_labels: list, path: str | Path, title: str = "",
            xlabel: str = "", fmt: str = ".2f") -> Path:
    """A table of numbers as coloured cells with the value written in each (class x cluster counts
    or shares, class x class co-assignment)."""
    values = np.asarray(values)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(col_labels) + 1.2, 0.9 + 0.32 * len(row_labels)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    numbered = all(isinstance(label, (int, np.integer)) for label in col_labels)
    ax.set_xticks(range(len(col_labels)), [str(label) for label in col_labels], rotation=0 if numbered else 45,
                  ha="center" if numbered else "right")
    ax.set_yticks(range(len(row_labels)), [str(label) for label in row_labels])
    if values.size <= 400:  # beyond that the numbers are unreadable
        middle = (values.max() + values.min()) / 2
        for (row, col), value in np.ndenumerate(values):
            ax.text(col, row, format(value, fmt), ha="center", va="center", fontsize=7,
                    color="black" if value > middle else "white")
    ax.set(xlabel=xlabel, title=title)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return save_figure(fig, path)


def embedding_scatter(points: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                      axis_names: tuple[str, str] = ("PC 1", "PC 2")) -> Path:
    """Points in 2-D, one colour per cluster (a legend up to 20 clusters)."""
    clusters = np.unique(labels)
    colours = plt.get_cmap("tab10" if len(clusters) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6, 4.8))
    for number, cluster in enumerate(clusters):
        members = labels == cluster
        ax.scatter(points[members, 0], points[members, 1], s=5, alpha=0.6, color=colours(number % colours.N),
                   label=str(cluster), linewidths=0)
    if len(clusters) <= 20:
        ax.legend(title="cluster", markerscale=3, fontsize=7, loc="best", ncol=2 if len(clusters) > 10 else 1)
    ax.set(xlabel=axis_names[0], ylabel=axis_names[1], title=title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
