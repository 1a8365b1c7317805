"""The run directory: every path, "done" marker and reader of what the stages write there.

No Ray and no torch: the report, the re-clustering job and a user's notebook read a run with
this module alone. A stage's output folder appears complete or not at all (``pipelines.storage``),
and each folder's marker file, written last, says the stage finished.

    RUN/config.toml                 the resolved config (every option, defaults included)
    RUN/stages.json                 per stage: wall time, finish time, one-line summary
    RUN/featurelens.log             Ray's and the libraries' log (a lone job's: OUT.log beside OUT)
    RUN/train/                      model.pt, metrics.jsonl, loss_curve.png, reconstructions.png,
                                    checkpoint_*/state.pt (Ray Train's), skipped_images.csv,
                                    centroids_start.npy (cluster refinement's start),
                                    pretrain/ (cluster refinement's pretraining, the same files)
    RUN/features/                   the Parquet feature table (``pipelines.feature_table``)
    RUN/stability/                  per_k/k=05/{fit.json,models.npz,result.json,class_counts.npy,
                                    centroids.npy},
                                    assignments/k05/*.parquet (id, path, k, cluster, seed_clusters),
                                    sweep.json, runs.csv, clusters.csv, findings.json (the
                                    recommended k, every cluster), class_means.npy, contingency/,
                                    plots/, summary.csv (last)
    RUN/recluster/                  groups.json, co_assignment.csv, classes.csv, plots/
    RUN/report/                     report.html, report.md, prototypes_k*.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

STAGES = ("train", "extract", "stability", "recluster", "report")
STAGE_DIRS = {"train": "train", "extract": "features", "stability": "stability", "recluster": "recluster",
              "report": "report"}
CONFIG_FILE, STAGES_FILE = "config.toml", "stages.json"
LOG_FILE = "featurelens.log"  # Ray's and the libraries' output (the terminal keeps featurelens's lines)

# train/
MODEL_FILE, METRICS_FILE, STATE_FILE = "model.pt", "metrics.jsonl", "state.pt"
PRETRAIN_DIR = "pretrain"  # cluster refinement's pretraining: a train/ of its own inside train/
START_CENTROIDS_FILE = "centroids_start.npy"  # cluster refinement's placed centroids, kept for a rerun
SKIPPED_IMAGES_FILE = "skipped_images.csv"
# stability/
PER_K, MANIFEST, TRANSFORMED = "per_k", "sweep.json", "transformed.npy"
FIT_FILE, MODELS_FILE, RESULT_FILE, CLASS_COUNTS_FILE = "fit.json", "models.npz", "result.json", "class_counts.npy"
CENTROIDS_FILE = "centroids.npy"
SUMMARY_FILE, CLUSTERS_FILE, RUNS_FILE = "summary.csv", "clusters.csv", "runs.csv"
REPRESENTATION_FILE, CLASS_MEANS_FILE = "representation.csv", "class_means.npy"
FINDINGS_FILE, ASSIGNMENTS = "findings.json", "assignments"
# recluster/ and report/
GROUPS_FILE, REPORT_HTML, REPORT_MD = "groups.json", "report.html", "report.md"
# The file whose presence says a stage finished (the train stage also needs its epochs).
DONE_MARKERS = {"train": MODEL_FILE, "extract": ".", "stability": SUMMARY_FILE, "recluster": GROUPS_FILE,
                "report": REPORT_HTML}


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / STAGE_DIRS[stage]


def stage_done(run_dir: str | Path, stage: str, epochs: int) -> bool:
    """Whether ``stage``'s complete output is in ``run_dir`` (training: all ``epochs`` of it)."""
    folder = stage_dir(run_dir, stage)
    if not (folder / DONE_MARKERS[stage]).exists():
        return False
    return stage != "train" or trained_epochs(folder) >= epochs


# --- train/ -------------------------------------------------------------------------------------


def read_metrics(train_dir: str | Path) -> list[dict]:
    """One dict per finished epoch (``metrics.jsonl``); [] before the first."""
    path = Path(train_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def trained_epochs(train_dir: str | Path) -> int:
    history = read_metrics(train_dir)
    return int(history[-1]["epoch"]) if history else 0


# --- stability/ ---------------------------------------------------------------------------------


def k_dir(stability: str | Path, k: int) -> Path:
    """The folder of one finished k of a sweep."""
    return Path(stability) / PER_K / f"k={k:02d}"


def read_manifest(stability: str | Path) -> dict:
    """What a finished sweep swept: its k, table, fingerprint, settings and class names."""
    path = Path(stability) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{stability}: no stability sweep here ({MANIFEST} missing); run jobs.stability first")
    return json.loads(path.read_text())


def assignments_dir(stability: str | Path, k: int) -> Path:
    """Every row's cluster at one k: Parquet files of id, path, k, cluster (seed 0), seed_clusters."""
    return Path(stability) / ASSIGNMENTS / f"k{k:02d}"


def read_assignments(stability: str | Path, k: int, columns: list[str] | None = None) -> pa.Table:
    """The assignments of one k (``columns`` of them), rows sorted by id."""
    folder = assignments_dir(stability, k)
    if not folder.is_dir():
        raise FileNotFoundError(f"{stability}: no assignments of k={k} ({folder} missing)")
    table = pq.read_table(folder, columns=columns, partitioning=None)
    return table.take(np.argsort(table["id"].to_numpy(), kind="stable")) if "id" in table.column_names else table


def read_labels(stability: str | Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n], labels [seeds, n]) of one k of a finished sweep, sorted by id."""
    table = read_assignments(stability, k, ["id", "seed_clusters"])
    seeds = table.schema.field("seed_clusters").type.list_size
    labels = table["seed_clusters"].combine_chunks().flatten().to_numpy().reshape(-1, seeds).T
    return table["id"].to_numpy(), np.ascontiguousarray(labels, dtype=np.int32)


def read_prototypes(stability: str | Path, k: int) -> tuple[list[list[int]], np.ndarray]:
    """Per cluster of seed 0 of ``k``: the ids nearest its centre (nearest first), and the
    clusters' mean feature vectors [k, d], as the sweep's assignment pass found them."""
    folder = k_dir(stability, k)
    result = json.loads((folder / RESULT_FILE).read_text())["result"]
    return result["prototypes"], np.load(folder / CENTROIDS_FILE)
