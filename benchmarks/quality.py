"""Cluster quality against the classes, measured honestly: ``make quality`` -> RESULTS.md.

For Fashion-MNIST (all 70,000 images, k = 10) and the ORL faces (400 images, k = 40 identities)
this trains the seed autoencoder with several seeds (Ray Train), extracts each one's features of
every image (Ray Data), and clusters them with every recipe in ``RECIPES`` (the transforms and
clusterers of ``pipelines.transforms``, as the stability stage runs them), beside raw pixels and
their PCA. Per recipe:

* ACC / NMI / ARI against the classes, mean over the clusterer seeds: on all images, and (for
  Fashion-MNIST) on the 10,000 test images alone (the same partitions, restricted);
* pairwise ARI between the clusterer seeds;
* ARI across autoencoder seeds (representation stability): the partitions made from the features
  of different autoencoders, compared point by point (``stability.cross_model_agreement``), and
  the mean of the autoencoders' ACCs; the seconds of the transform (fitted once) and every fit.

Models and feature tables land in runs/quality/ and a rerun reuses them (training resumes); the
clustering is recomputed. Each data set's table replaces its section between RESULTS.md's markers.

    python -m benchmarks.quality [--data fashion-mnist,orl-faces] [--ae-seeds 3] [--ae-epochs 2] [--seeds 10]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import REPO, machine, machine_markdown
from pipelines.config import DataConfig, ExtractConfig, StabilityConfig, TrainConfig
from pipelines.measures import class_agreement, cross_model_agreement, pairwise_seed_agreement
from pipelines.transforms import fit_clusters

RESULTS = REPO / "RESULTS.md"
DATA_NAMES = {"Fashion-MNIST": "fashion-mnist", "ORL faces": "orl-faces"}  # RESULTS.md's sections: --data
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
PRESETS = ("fashion-mnist-idec", "orl-faces")  # the recipes make quality measures beside the seed's (configs/*.toml)
DEFAULT_FACES = REPO.parent / "shared" / "data" / "faces" / "att_faces"


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # "pixels" or "features"
    transform: str
    clusterer: str = "kmeans"


RECIPES = [
    Recipe("raw pixels", "pixels", "none"),
    Recipe("raw pixels, PCA 50", "pixels", "pca"),
    Recipe("AE features", "features", "none"),
    Recipe("AE, standardize", "features", "standardize"),
    Recipe("AE, L2", "features", "l2"),
    Recipe("AE, PCA 50 whitened", "features", "pca-whiten"),
    Recipe("AE, UMAP 10 (N2D)", "features", "umap"),
    Recipe("AE, UMAP 10, GMM (N2D)", "features", "umap", "gmm"),
    Recipe("AE, UMAP 10, KMeans consensus", "features", "umap", "kmeans-consensus"),
]


@dataclass(frozen=True)
class DataSet:
    name: str
    data: DataConfig
    k: int
    train: TrainConfig  # per autoencoder seed: replace(seed=...)
    test_ids_from: int | None  # ids >= this are the test images (Fashion-MNIST); None: no test column
    recipe: str = ""  # a preset of configs/ whose [train] options the autoencoders take ("": the seed's)


def data_sets(args) -> list[DataSet]:
    """The data sets of ``--data``, each followed by the presets that name its data (``[data]
    dataset``: images for the faces), trained with the preset's [train] options, its epochs included
    (a recipe is measured as it ships); a preset's rows are named "AE <preset>, ..."."""
    from pipelines.pipeline import load_config_file, preset_path

    presets = {preset: load_config_file(preset_path(preset)) for preset in args.presets}
    datasets = []
    bases = {"fashion-mnist": (fashion_mnist, "fashion-mnist"), "orl-faces": (orl_faces, "images")}
    for base, kind in [(bases[name][0](args), bases[name][1]) for name in DATA_NAMES.values() if name in args.data]:
        datasets += [base] + [replace(base, train=replace(base.train, **options.get("train", {})), recipe=preset)
                              for preset, options in presets.items()
                              if options.get("data", {}).get("dataset", "fashion-mnist") == kind]
    return datasets


def fashion_mnist(args) -> DataSet:
    train = TrainConfig(epochs=args.ae_epochs, lr=2e-3, lr_schedule="cosine", workers=2)
    return DataSet("Fashion-MNIST", DataConfig(limit=args.limit), 10, train, test_ids_from=60_000)


def orl_faces(args) -> DataSet:
    data = DataConfig(dataset="images", data_dir=str(args.faces_dir), image_size="64x64")
    # 400 images: small batches and more epochs give the optimizer enough steps; 64x64 rather
    # than the native 112x92 keeps three autoencoders within minutes on 2 cores.
    train = TrainConfig(epochs=args.face_epochs, batch_size=16, lr=2e-3, lr_schedule="cosine", workers=2)
    return DataSet("ORL faces", data, 40, train, test_ids_from=None)


# --- one recipe on one matrix (no Ray) -------------------------------------------------------------


def cluster(X: np.ndarray, recipe: Recipe, k: int, seeds: int, transformed: dict) -> tuple[np.ndarray, float]:
    """(labels [seeds, n], seconds) of ``seeds`` fits on the recipe's transform of ``X``. The
    transform is fitted once per matrix (``transformed`` caches it: a UMAP of 70,000 points takes
    minutes) and its time counts in every recipe that uses it."""
    from pipelines.sweep_scores import transform_points

    config = StabilityConfig(k=str(k), transform=recipe.transform, clusterer=recipe.clusterer)  # k: UMAP's neighbours
    key = (id(X), recipe.transform)
    if key not in transformed:
        started = time.perf_counter()
        transformed[key] = transform_points(X, config)[1], time.perf_counter() - started
    points, transform_seconds = transformed[key]
    started = time.perf_counter()
    labels = np.stack([fit_clusters(points, k, seed, config.clusterer, config.gmm_covariance) for seed in range(seeds)])
    return labels, transform_seconds + time.perf_counter() - started


def scores(labels: np.ndarray, classes: np.ndarray, test: np.ndarray | None) -> dict:
    """Mean ACC/NMI/ARI over the seeds' partitions, on all points and on the test points."""
    row = {}
    for part, mask in (("all", np.ones(len(classes), bool)), ("test", test)):
        per_seed = [class_agreement(classes[mask], seed_labels[mask]) for seed_labels in labels] if mask is not None else []
        for measure in ("acc", "nmi", "ari"):
            row[f"{measure}_{part}"] = float(np.mean([s[measure] for s in per_seed])) if per_seed else float("nan")
    row["seed_ari"] = pairwise_seed_agreement(labels, "ari")["mean"] if len(labels) > 1 else float("nan")
    return row


# --- models, tables and the table of results ------------------------------------------------------


def prepare_models(dataset: DataSet, args) -> dict[str, list]:
    """Train (or resume) one autoencoder per seed and extract its features of every image:
    {row name's "AE ..." part: the tables, one per seed}; a refinement preset's pretrained
    autoencoders (train/pretrain) are measured too, as "AE <preset> before refinement"."""
    from pipelines.extract import extract_features
    from pipelines.feature_table import read_features
    from pipelines.rundir import PRETRAIN_DIR
    from pipelines.train import train

    folder = args.out / (dataset.name.lower().replace(" ", "-") + (f"-{dataset.recipe}" if dataset.recipe else ""))
    trained = f"AE {dataset.recipe}" if dataset.recipe else "AE"
    models = {trained: ""} | ({f"{trained} before refinement": PRETRAIN_DIR} if dataset.train.pretrain_epochs else {})
    tables = {name: [] for name in models}
    for seed in range(args.ae_seeds):
        run_dir = folder / f"ae-seed{seed}"
        train(dataset.data, replace(dataset.train, seed=seed), run_dir)
        for name, part in models.items():
            features = folder / f"features-seed{seed}{'-' + part if part else ''}"
            if not features.exists():
                extract_features(dataset.data, ExtractConfig(checkpoint=str(run_dir / part), split="all"), features)
            tables[name].append(read_features(features))
    return tables


def pixels_of(dataset: DataSet, ids: np.ndarray) -> np.ndarray:
    """The images as float rows in [0, 1], in the order of ``ids``."""
    from pipelines.data import load_images

    source = load_images(dataset.data, "all")
    by_id = {}
    for batch in source.dataset.select_columns(["id", "image"]).iter_batches(batch_size=8192, batch_format="numpy"):
        by_id.update(zip(batch["id"].tolist(), batch["image"].reshape(len(batch["id"]), -1)))
    return np.stack([by_id[int(i)] for i in ids]).astype(np.float32) / 255.0


def measured_recipes(dataset: DataSet, feature_sets: dict[str, list]) -> list[tuple[Recipe, list]]:
    """Every row's recipe, with the feature tables it clusters: the pixels' rows (in the seed's
    table only), then each set of features under every transform and clusterer."""
    rows = [] if dataset.recipe else [(recipe, []) for recipe in RECIPES if recipe.source == "pixels"]
    for name, tables in feature_sets.items():
        rows += [(Recipe(recipe.name.replace("AE", name, 1), *astuple(recipe)[1:]), tables)
                 for recipe in RECIPES if recipe.source == "features"]
    return rows


def across_autoencoders(partitions: list[np.ndarray], classes: np.ndarray) -> dict:
    """ARI across the autoencoders' partitions [seeds, n], and the mean of their ACCs (the first's can flatter)."""
    return {"ae_seed_ari": cross_model_agreement(partitions, "ari")["mean"],
            "acc_ae_mean": float(np.mean([scores(labels, classes, None)["acc_all"] for labels in partitions]))}


def quality_table(dataset: DataSet, args) -> pd.DataFrame:
    feature_sets = prepare_models(dataset, args)
    reference = next(iter(feature_sets.values()))[0]
    for tables in feature_sets.values():
        if not all(np.array_equal(table.ids, reference.ids) for table in tables):
            raise RuntimeError(f"{dataset.name}: the autoencoders' feature tables hold different images")
    classes = reference.labels
    test = reference.ids >= dataset.test_ids_from if dataset.test_ids_from is not None else None
    pixels = None if dataset.recipe else pixels_of(dataset, reference.ids)
    rows, transformed = [], {}
    for recipe, tables in measured_recipes(dataset, feature_sets):
        X = pixels if recipe.source == "pixels" else tables[0].X
        labels, seconds = cluster(X, recipe, dataset.k, args.seeds, transformed)
        row = {"recipe": recipe.name, **scores(labels, classes, test), "ae_seed_ari": np.nan, "acc_ae_mean": np.nan,
               "seconds": seconds}
        if len(tables) > 1:
            others = [cluster(table.X, recipe, dataset.k, args.other_seeds, transformed)[0] for table in tables[1:]]
            row |= across_autoencoders([labels, *others], classes)
        print(f"[quality] {dataset.name}: {recipe.name}: ACC {row['acc_all']:.3f} NMI {row['nmi_all']:.3f} "
              f"seed ARI {row['seed_ari']:.3f} AE-seed ARI {row['ae_seed_ari']:.3f} ({seconds:.0f} s)", flush=True)
        rows.append(row)
    return pd.DataFrame(rows)


COLUMNS = {"recipe": "recipe", "acc_all": "ACC all", "nmi_all": "NMI all", "ari_all": "ARI all",
           "acc_test": "ACC test", "nmi_test": "NMI test", "ari_test": "ARI test",
           "seed_ari": "ARI across clusterer seeds", "ae_seed_ari": "ARI across AE seeds",
           "acc_ae_mean": "ACC, mean of the AE seeds", "seconds": "seconds"}


def markdown(table: pd.DataFrame) -> str:
    shown = table.rename(columns=COLUMNS)[list(COLUMNS.values())].dropna(axis=1, how="all")
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    cells = [[f"{v:.3f}" if isinstance(v, float) and name != "seconds" else (f"{v:.0f}" if name == "seconds" else str(v))
              for name, v in zip(shown.columns, row)] for row in shown.itertuples(index=False)]
    return header + "".join("| " + " | ".join(c.replace("nan", "–") for c in row) + " |\n" for row in cells)


def trainings_text(dataset: DataSet) -> str:
    """How the data set's autoencoders were trained, for its heading ("orl-faces x 30 + 30 epochs (...)")."""
    train, recipe = dataset.train, f"{dataset.recipe} x " if dataset.recipe else ""
    refined = f"{train.pretrain_epochs} + " if train.pretrain_epochs else ""
    return f"{recipe}{refined}{train.epochs} epochs" + (" (pretraining + refinement)" if refined else "")


def section_text(dataset: DataSet, table: pd.DataFrame, trainings: str, args) -> str:
    """One data set's part of RESULTS.md: its heading, the machine, the command, the table."""
    command = (f"python -m benchmarks.quality --data {DATA_NAMES[dataset.name]} --ae-seeds {args.ae_seeds} "
               + (f"--ae-epochs {args.ae_epochs} " if dataset.name == "Fashion-MNIST" else f"--face-epochs {args.face_epochs} ")
               + f"--seeds {args.seeds} --other-seeds {args.other_seeds} --presets '{','.join(args.presets)}'"
               + (f" --limit {args.limit}" if args.limit else "") + (" --print" if args.print else ""))
    return "\n".join([f"### {dataset.name} (k = {dataset.k}, {args.ae_seeds} autoencoders x {trainings}, "
                      f"{args.seeds} clusterer seeds)", "", machine_markdown(machine()), f"Command: `{command}`", "",
                      markdown(table)])


def merged_sections(generated: str, sections: dict[str, str]) -> str:
    """The generated part of RESULTS.md with the data sets' ``sections`` ({name: text}) replaced
    or added, in DATA_NAMES' order; a data set not measured now keeps its earlier section."""
    kept = {part.split(" (", 1)[0]: "### " + part.strip() for part in ("\n" + generated).split("\n### ")[1:]}
    kept |= sections
    return "\n\n".join(kept[name] for name in DATA_NAMES if name in kept)


def write_results(sections: list[tuple[DataSet, pd.DataFrame, str]], args) -> None:
    texts = {dataset.name: section_text(dataset, table, trainings, args) for dataset, table, trainings in sections}
    if args.limit or args.print:  # a quick check is shown, never recorded
        print("\n\n".join(texts.values()), flush=True)
        return
    text = RESULTS.read_text() if RESULTS.exists() else f"# Cluster quality\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{RESULTS} lacks the markers {BEGIN} / {END} that delimit the generated tables")
    head, rest = text.split(BEGIN, 1)
    generated, tail = rest.split(END, 1)
    RESULTS.write_text(f"{head}{BEGIN}\n\n{merged_sections(generated, texts)}\n\n{END}{tail}")
    print(f"[quality] tables written to {RESULTS}", flush=True)
    for dataset, table, _ in sections:
        table.to_csv(args.out / f"{dataset.name.lower().replace(' ', '-')}.csv", index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ae-seeds", type=int, default=3, help="autoencoders trained per data set (default 3)")
    parser.add_argument("--ae-epochs", type=int, default=2,
                        help="epochs of each seed Fashion-MNIST autoencoder (default 2; a preset trains its own)")
    parser.add_argument("--face-epochs", type=int, default=30, help="epochs of each faces autoencoder (default 30)")
    parser.add_argument("--seeds", type=int, default=10, help="clusterer seeds on the first autoencoder (default 10)")
    parser.add_argument("--other-seeds", type=int, default=3,
                        help="clusterer seeds on each other autoencoder, for the ARI across AE seeds (default 3)")
    parser.add_argument("--faces-dir", type=Path, default=Path(os.environ.get("FEATURELENS_FACES_DIR", DEFAULT_FACES)),
                        help="the ORL faces ($FEATURELENS_FACES_DIR, else ../shared/data/faces/att_faces)")
    parser.add_argument("--presets", type=lambda text: [p for p in text.split(",") if p], default=list(PRESETS),
                        help=f"recipes: presets of configs/, each measured on the data set it names "
                             f"(default: {','.join(PRESETS) or 'none'}; '' for none)")
    parser.add_argument("--data", type=lambda text: text.split(","), default=list(DATA_NAMES.values()),
                        help=f"the data sets measured (default {','.join(DATA_NAMES.values())}); RESULTS.md keeps "
                             "the others' sections")
    parser.add_argument("--limit", type=int, default=None,
                        help="Fashion-MNIST: the first N images of each split only (a quick check, not a result)")
    parser.add_argument("--print", action="store_true", help="print the tables instead of writing RESULTS.md")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "quality", help="models and feature tables")
    args = parser.parse_args(argv)
    if unknown := set(args.data) - set(DATA_NAMES.values()):
        parser.error(f"--data: unknown {', '.join(sorted(unknown))}; known: {', '.join(DATA_NAMES.values())}")
    if "orl-faces" in args.data and not args.faces_dir.is_dir():
        parser.error(f"--faces-dir {args.faces_dir} is not a folder (or pass --data fashion-mnist)")

    try:
        datasets = data_sets(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"--presets: {error}")
    from pipelines.runtime import init_ray

    init_ray()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for dataset in datasets:  # written after each data set: a long run keeps what it finished
        table, trainings = quality_table(dataset, args), trainings_text(dataset)
        if dataset.recipe:  # a recipe's rows join its data set's table
            dataset, rows, seed_trainings = sections.pop()
            table, trainings = pd.concat([rows, table], ignore_index=True), f"{seed_trainings}; {trainings}"
        sections.append((dataset, table, trainings))
        write_results(sections, args)


if __name__ == "__main__":
    main()
