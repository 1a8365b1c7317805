"""Figures of the training stage, written as PNG files (the report embeds them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # batch jobs have no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Write atomically, so that a report never embeds a half-written image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


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
