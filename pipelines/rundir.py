"""The run directory: every path, "done" marker and reader of what the stages write there.

No Ray and no torch: the report, the re-clustering job and a user's notebook read a run with
this module alone. A stage's output folder appears complete or not at all (``pipelines.storage``),
and each folder's marker file, written last, says the stage finished.

    RUN/config.toml                 the resolved config (every option, defaults included)
    RUN/stages.json                 per stage: wall time, finish time, one-line summary
    RUN/featurelens.log             Ray's and the libraries' log (a lone job's: OUT.log beside OUT)
    RUN/train/                      model.pt, metrics.jsonl, loss_curve.png, reconstructions.png,
                                    checkpoint_*/state.pt (Ray Train's), skipped_images.csv
    RUN/features/                   the Parquet feature table (``pipelines.feature_table``)
    RUN/stability/                  per_k/k=05/{labels.npy,result.json}, ids.npy, sweep.json,
                                    runs.csv, clusters.csv, findings.json (the recommended k, every
                                    cluster), assignments.parquet|csv (id, path, k, cluster),
                                    contingency/, plots/, summary.csv (last)
    RUN/recluster/                  groups.json, co_assignment.csv, classes.csv, plots/
    RUN/report/                     report.html, report.md, prototypes_k*.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STAGES = ("train", "extract", "stability", "recluster", "report")
STAGE_DIRS = {"train": "train", "extract": "features", "stability": "stability", "recluster": "recluster",
              "report": "report"}
CONFIG_FILE, STAGES_FILE = "config.toml", "stages.json"
LOG_FILE = "featurelens.log"  # Ray's and the libraries' output (the terminal keeps featurelens's lines)

# train/
MODEL_FILE, METRICS_FILE, STATE_FILE = "model.pt", "metrics.jsonl", "state.pt"
SKIPPED_IMAGES_FILE = "skipped_images.csv"
# stability/
PER_K, IDS_FILE, MANIFEST, TRANSFORMED = "per_k", "ids.npy", "sweep.json", "transformed.npy"
SUMMARY_FILE, CLUSTERS_FILE, RUNS_FILE = "summary.csv", "clusters.csv", "runs.csv"
REPRESENTATION_FILE = "representation.csv"
FINDINGS_FILE, ASSIGNMENTS_PARQUET, ASSIGNMENTS_CSV = "findings.json", "assignments.parquet", "assignments.csv"
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


def read_labels(stability: str | Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n], labels [seeds, n]) of one k of a finished sweep."""
    return np.load(Path(stability) / IDS_FILE), np.load(k_dir(stability, k) / "labels.npy")
