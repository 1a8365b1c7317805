"""Recipe search on a subset: which training option makes the features cluster by class.

    python -m benchmarks.recipes --data fashion [--images 10000] [--epochs 5] [--recipes seed,mask,...]
    python -m benchmarks.recipes --data faces [--epochs 30]
    python -m benchmarks.recipes --umap-seeds 3 --epochs 20 --recipes pixels,seed  (the models left, through UMAP)
    python -m benchmarks.recipes --transfer [--images 10000] [--first-epochs 16] [--then-epochs 4]  (see transfer)

A plain PyTorch loop (no Ray: the public steps of ``pipelines.train``, as each Ray Train worker
runs them) trains one autoencoder per recipe, seeded, on the first ``--images`` Fashion-MNIST
training images (faces: all 400 ORL images at 64x64, batch 16), then clusters the codes of the
10,000 test images (faces: of the 400 images) with KMeans, k = 10 (faces: 40), ``--seeds``
seeds, beside KMeans on the raw pixels; the ``*_l2`` columns: KMeans of the same vectors
L2-normalised. A refinement recipe (``idec``) starts from the model the ``seed`` recipe left in
``.bench/recipes`` and trains ``--refine-epochs`` more with the IDEC term.
Every row is appended to ``.bench/recipes/<data>[-transfer].jsonl`` and printed as a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from benchmarks.common import REPO, SCRATCH, shuffled_batches

RECIPES = {  # name: TrainConfig options; refine: IDEC refinement of that recipe's model
    "seed": {},
    "gaussian": {"corrupt": "gaussian"}, "salt": {"corrupt": "salt"},
    "mask": {"corrupt": "mask"}, "code-10": {"code_dim": 10}, "code-32": {"code_dim": 32},
    # SimCLR's NT-Xent beside reconstruction (weight, temperature, head; a recipe may set the batch)
    "simclr": {"contrastive": 1.0}, "simclr-b256": {"contrastive": 1.0, "batch_size": 256},
    "simclr-t0.2-b256": {"contrastive": 1.0, "temperature": 0.2, "batch_size": 256},
    "simclr-s0.2-j0.4-b256": {"contrastive": 1.0, "view_scale": 0.2, "view_jitter": 0.4, "batch_size": 256},
    "simclr-s0.1-j0.6-b256": {"contrastive": 1.0, "view_scale": 0.1, "view_jitter": 0.6, "batch_size": 256},
    "simclr-s0.2-j0.4": {"contrastive": 1.0, "view_scale": 0.2, "view_jitter": 0.4},
    "simclr-s0.2-j0.4-b64": {"contrastive": 1.0, "view_scale": 0.2, "view_jitter": 0.4, "batch_size": 64},
    "seed-b64-lr5e-4": {"batch_size": 64, "lr": 5e-4},  # the control of the two below
    "simclr-b64-lr5e-4": {"contrastive": 1.0, "batch_size": 64, "lr": 5e-4},
    "simclr-s0.2-j0.4-b64-lr5e-4": {"contrastive": 1.0, "view_scale": 0.2, "view_jitter": 0.4, "batch_size": 64, "lr": 5e-4},
    "idec": {"refine": "seed"},
}
FACES = REPO.parent / "shared" / "data" / "faces" / "att_faces"
OUT = SCRATCH / "recipes"


def fashion(images: int):
    from pipelines.data import fashion_mnist_arrays

    (train, train_labels), (test, labels) = fashion_mnist_arrays("train"), fashion_mnist_arrays("test")
    return train[:images].copy(), test, labels, 10, train_labels[:images].copy()  # the last: transfer's classifiers


def faces():
    from pipelines.data import decode_image, list_image_folder

    manifest, _ = list_image_folder(FACES)
    images = np.stack([decode_image(path, 64, 64, "L") for path in manifest["path"].to_pylist()])  # mode L: (H, W)
    return images, images, np.asarray(manifest["label"].to_pylist()), 40


def train_plain(config, spec, train_images: np.ndarray, images_for_centroids=None, labels=None, milestones=None):
    """A model trained ``config.epochs`` on ``train_images`` (with ``labels``: a classifier) by the
    public steps; (model, seconds). ``milestones`` ({epoch: path}): the model is saved there too."""
    import torch

    from pipelines.model import save_model
    from pipelines.train import Recipe, build_optimizer, initial_model, train_epoch, training_network

    started, milestones = time.perf_counter(), milestones or {}
    model = initial_model(spec, config, images_for_centroids)
    network = training_network(model, config.mode, config.freeze_encoder, Recipe.of(config).projection)
    columns = {"image": torch.from_numpy(train_images)} | ({} if labels is None else {"label": torch.from_numpy(labels)})
    optimizer, scheduler = build_optimizer(network, config, steps_per_epoch=-(-len(train_images) // config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        loss, seen = train_epoch(network, shuffled_batches(columns, config.batch_size, generator), optimizer,
                                 config.mode, scheduler, recipe=Recipe.of(config))
        print(f"[recipes]   epoch {epoch}/{config.epochs} train loss {loss / seen:.5f}", flush=True)
        if epoch in milestones:
            save_model(milestones[epoch], model, mode=config.mode, seconds=time.perf_counter() - started)
    return model.eval(), time.perf_counter() - started


def kmeans_scores(X: np.ndarray, labels: np.ndarray, k: int, seeds: int) -> dict:
    from pipelines.transforms import fit_seeds

    return mean_scores(labels, fit_seeds(X, k, seeds)[1])


def mean_scores(labels: np.ndarray, partitions) -> dict:
    """ACC / NMI / ARI against ``labels``, the mean over ``partitions`` (one labeling per row)."""
    from pipelines.measures import class_agreement

    runs = [class_agreement(labels, partition) for partition in partitions]
    return {m: float(np.mean([r[m] for r in runs])) for m in ("acc", "nmi", "ari")}


def kmeans_scores_both(X: np.ndarray, labels: np.ndarray, k: int, seeds: int) -> dict:
    """:func:`kmeans_scores` of ``X`` and (keys ``*_l2``) of its rows L2-normalised."""
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return kmeans_scores(X, labels, k, seeds) | {f"{m}_l2": v for m, v in kmeans_scores(unit, labels, k, seeds).items()}


def umap_across_seeds(name: str, args, data) -> dict:
    """N2D's step on the models ``name`` left for AE seeds 0 .. ``--umap-seeds``-1 (or the pixels):
    the test codes through UMAP 10 (20 neighbours, min_dist 0), KMeans; mean scores over the AE
    seeds, and the ARI across them (every pair of partitions, point by point)."""
    from pipelines.measures import cross_model_agreement
    from pipelines.model import load_model
    from pipelines.train import encode
    from pipelines.transforms import apply_transform, fit_seeds

    test_images, labels, k = data[1:4]
    pixels = test_images.reshape(len(test_images), -1).astype(np.float32) / 255
    codes = [pixels] if name == "pixels" else [encode(load_model(OUT / f"{args.data}-{name}-e{args.epochs}-s{seed}.pt")[0],
                                                      test_images).numpy() for seed in range(args.umap_seeds)]
    partitions = [fit_seeds(apply_transform(X, ["umap"]), k, args.seeds)[1] for X in codes]
    across = cross_model_agreement(partitions)["mean"] if len(partitions) > 1 else float("nan")
    return {"recipe": f"{name}, UMAP 10", "data": args.data, "epochs": args.epochs, "ae_seeds": len(codes),
            **mean_scores(labels, np.concatenate(partitions)), "ari_across_ae_seeds": across}


def held_out(model, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(reconstruction MSE, the classifier head's accuracy or NaN where ``labels`` outnumber its classes) on
    ``images``, by training's evaluation step."""
    import torch

    from pipelines.train import evaluate, training_network

    batches = list(shuffled_batches({"image": torch.tensor(images), "label": torch.tensor(labels)}, 1000, torch.Generator()))
    mse, _, seen = evaluate(training_network(model, "autoencoder"), batches, "autoencoder")
    if labels.max() >= model.spec.num_classes:  # the faces' 40 people: the head has 10 outputs
        return mse / seen, float("nan")
    return mse / seen, evaluate(training_network(model, "classifier"), batches, "classifier")[1] / seen


def measure(name: str, args, data) -> dict:
    from pipelines.config import TrainConfig
    from pipelines.measures import class_agreement
    from pipelines.model import ModelSpec, load_model
    from pipelines.train import encode, soft_assignment

    print(f"[recipes] {args.data}: {name}", flush=True)
    train_images, test_images, labels, k = data[:4]
    row = {"recipe": name, "data": args.data, "epochs": args.epochs, "ae_seed": args.ae_seed, "images": len(train_images)}
    if name == "pixels":
        X = test_images.reshape(len(test_images), -1).astype(np.float32) / 255
        return {**row, **kmeans_scores_both(X, labels, k, args.seeds), "test_mse": float("nan"), "seconds": 0.0}
    options = dict(RECIPES[name])
    base = options.pop("refine", None)
    config = TrainConfig(**{"epochs": args.epochs, "lr": 2e-3, "lr_schedule": "cosine", "workers": 1, "seed": args.ae_seed,
                            "batch_size": 16 if args.data == "faces" else 64} | options)
    if base:
        source = OUT / f"{args.data}-{base}-e{args.epochs}-s{args.ae_seed}.pt"
        config = replace(config, epochs=args.refine_epochs, clusters=k, init_from=str(source),
                         code_dim=load_model(source)[0].spec.code_dim)
    spec = ModelSpec(*train_images.shape[1:3], code_dim=config.code_dim, clusters=config.clusters)
    model, seconds = train_plain(config, spec, train_images, train_images if base else None,
                                 milestones={config.epochs: OUT / f"{args.data}-{name}-e{args.epochs}-s{args.ae_seed}.pt"})
    codes, mse = encode(model, test_images), held_out(model, test_images, labels)[0]
    row |= {**kmeans_scores_both(codes.numpy(), labels, k, args.seeds), "test_mse": mse, "seconds": seconds,
            "batch_size": config.batch_size}
    if base:  # the refined model's own clusters: each image's most likely centroid
        row["idec_own_acc"] = class_agreement(labels, soft_assignment(codes, model.centroids.detach()).argmax(1).numpy())["acc"]
    return row


def transfer(args, data) -> list[dict]:
    """The seed's transfer experiment, both directions, on ``data`` (as :func:`fashion` returns it). Each
    arm trains with the product's defaults (lr 1e-3, the classifier's 1e-4; a second stage starts a fresh
    Adam, as ``--init-from`` does) and saves its models under OUT: the later arms start from them, and a
    rerun trains only the arms whose last model is missing. Then every model is measured."""
    from pipelines.config import TrainConfig
    from pipelines.model import ModelSpec, load_model
    from pipelines.train import encode

    (train, test, test_labels, _, train_labels), n, m = data, args.first_epochs, args.then_epochs
    file = lambda arm, epoch: OUT / f"transfer-{len(train)}-s{args.ae_seed}-{arm}-e{epoch}.pt"  # noqa: E731
    for arm, mode, source, epochs in [("ae", "autoencoder", None, (n, n + m)), ("clf", "classifier", None, (m, n, n + m)),
                                      ("clf-ae", "autoencoder", file("clf", n), (m,)),
                                      ("probe", "classifier", file("ae", n), (m,)), ("tune", "classifier", file("ae", n), (m,))]:
        if not file(arm, max(epochs)).exists():
            print(f"[recipes] transfer: {arm}", flush=True)
            config = TrainConfig(mode=mode, epochs=max(epochs), workers=1, seed=args.ae_seed,
                                 freeze_encoder=arm == "probe", init_from=source and str(source))
            train_plain(config, ModelSpec(*train.shape[1:3]), train, labels=train_labels if mode == "classifier" else None,
                        milestones={epoch: file(arm, epoch) for epoch in epochs})
    rows = []
    for name, arm, epoch in [(f"autoencoder {n}", "ae", n), (f"autoencoder {n + m}", "ae", n + m),
                             (f"classifier {n} → autoencoder {m}", "clf-ae", m), (f"classifier {m}", "clf", m),
                             (f"classifier {n}", "clf", n), (f"classifier {n + m}", "clf", n + m),
                             (f"autoencoder {n} → classifier {m}, encoder frozen", "probe", m),
                             (f"autoencoder {n} → classifier {m}, fine-tuned", "tune", m)]:
        model, info = load_model(file(arm, epoch))
        (mse, accuracy), codes = held_out(model, test, test_labels), encode(model, test).numpy()
        rows.append({"arm": name, "mode": info["mode"], "test_mse": mse, "test_acc": accuracy,
                     **kmeans_scores(codes, test_labels, 10, args.seeds), "seconds": info["seconds"],
                     "images": len(train), "first_epochs": n, "then_epochs": m, "seed": args.ae_seed})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("fashion", "faces"), default="fashion")
    parser.add_argument("--images", type=int, default=10_000, help="Fashion-MNIST training images (default 10,000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per recipe (default 5)")
    parser.add_argument("--refine-epochs", type=int, default=2, help="epochs of an idec recipe (default 2)")
    parser.add_argument("--recipes", default="pixels," + ",".join(RECIPES), help="comma-separated names")
    parser.add_argument("--seeds", type=int, default=3, help="KMeans seeds (default 3)")
    parser.add_argument("--ae-seed", type=int, default=0, help="the autoencoder's seed (default 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--umap-seeds", type=int, default=0, help="N: instead of training, the models left for AE seeds "
                        "0..N-1 through UMAP 10 + KMeans, with the ARI across them")
    parser.add_argument("--transfer", action="store_true", help="the transfer experiment (Fashion-MNIST)")
    parser.add_argument("--first-epochs", type=int, default=16, help="transfer: N, the first stage (default 16)")
    parser.add_argument("--then-epochs", type=int, default=4, help="transfer: M, the second stage (default 4)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    data = fashion(args.images) if args.data == "fashion" else faces()
    score = umap_across_seeds if args.umap_seeds else measure
    rows = transfer(args, data) if args.transfer else (score(name, args, data) for name in args.recipes.split(","))
    for row in rows:
        with open(OUT / f"{args.data}{'-transfer' * args.transfer}.jsonl", "a") as log:
            log.write(json.dumps(row) + "\n")
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
