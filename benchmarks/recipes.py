"""Recipe search on a subset: which training option makes the features cluster by class.

    python -m benchmarks.recipes --data fashion [--images 10000] [--epochs 5] [--recipes seed,mask,...]
    python -m benchmarks.recipes --data faces [--epochs 30]

A plain PyTorch loop (no Ray: the public steps of ``pipelines.train``, as each Ray Train worker
runs them) trains one autoencoder per recipe, seeded, on the first ``--images`` Fashion-MNIST
training images (faces: all 400 ORL images at 64x64, batch 16), then clusters the codes of the
10,000 test images (faces: of the 400 images) with KMeans, k = 10 (faces: 40), ``--seeds``
seeds, beside KMeans on the raw pixels. A refinement recipe (``idec``) starts from the model the
``seed`` recipe left in ``.bench/recipes`` and trains ``--refine-epochs`` more with the IDEC term.
Every row is appended to ``.bench/recipes/<data>.jsonl`` and printed as a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from benchmarks.common import REPO, SCRATCH, shuffled_batches

RECIPES = {
    "seed": {},
    "gaussian": {"corrupt": "gaussian"},
    "salt": {"corrupt": "salt"},
    "mask": {"corrupt": "mask"},
    "mask-0.75": {"corrupt": "mask", "corrupt_level": 0.75},
    "code-10": {"code_dim": 10},
    "code-32": {"code_dim": 32},
    "code-64": {"code_dim": 64},
    "consistency": {"consistency": 1.0},
    "mask+code-32": {"corrupt": "mask", "code_dim": 32},
    "consistency+code-32": {"consistency": 1.0, "code_dim": 32},
    "idec": {"refine": "seed"},
    "idec-code-32": {"refine": "code-32"},
}
FACES = REPO.parent / "shared" / "data" / "faces" / "att_faces"
OUT = SCRATCH / "recipes"


def fashion(images: int):
    from pipelines.data import fashion_mnist_arrays

    train, _ = fashion_mnist_arrays("train")
    test, labels = fashion_mnist_arrays("test")
    return train[:images].copy(), test, labels, 10


def faces():
    from pipelines.data import decode_image, list_image_folder

    manifest, _ = list_image_folder(FACES)
    images = np.stack([decode_image(path, 64, 64, "L") for path in manifest["path"].to_pylist()])
    if images.ndim == 4:
        images = images[..., 0]
    return images, images, np.asarray(manifest["label"].to_pylist()), 40


def train_plain(config, spec, train_images: np.ndarray, images_for_centroids=None):
    """A model trained ``config.epochs`` on ``train_images`` by the public steps; (model, seconds)."""
    import torch

    from pipelines.train import Recipe, build_optimizer, initial_model, train_epoch, training_network

    started = time.perf_counter()
    model = initial_model(spec, config, images_for_centroids)
    network = training_network(model, "autoencoder")
    x = torch.from_numpy(train_images)
    optimizer, scheduler = build_optimizer(network, config, steps_per_epoch=-(-len(x) // config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        loss, seen = train_epoch(network, shuffled_batches({"image": x}, config.batch_size, generator), optimizer,
                                 "autoencoder", scheduler, recipe=Recipe.of(config))
        print(f"[recipes]   epoch {epoch + 1}/{config.epochs} train loss {loss / seen:.5f}", flush=True)
    return model.eval(), time.perf_counter() - started


def kmeans_scores(X: np.ndarray, labels: np.ndarray, k: int, seeds: int) -> dict:
    from pipelines.measures import class_agreement
    from pipelines.transforms import fit_clusters

    runs = [class_agreement(labels, fit_clusters(X, k, seed)) for seed in range(seeds)]
    return {m: float(np.mean([r[m] for r in runs])) for m in ("acc", "nmi", "ari")}


def measure(name: str, args, data) -> dict:
    import torch

    from pipelines.config import TrainConfig
    from pipelines.measures import class_agreement
    from pipelines.model import ModelSpec, load_model, save_model, scale_images
    from pipelines.train import encode, soft_assignment

    train_images, test_images, labels, k = data
    if name == "pixels":
        X, seconds, mse = test_images.reshape(len(test_images), -1).astype(np.float32) / 255, 0.0, float("nan")
        return {"recipe": name, **kmeans_scores(X, labels, k, args.seeds), "test_mse": mse, "seconds": seconds}
    options = dict(RECIPES[name])
    base = options.pop("refine", None)
    config = TrainConfig(epochs=args.epochs, lr=2e-3, lr_schedule="cosine", workers=1, seed=args.ae_seed,
                         batch_size=16 if args.data == "faces" else 64, **options)
    height, width = train_images.shape[1:3]
    if base:
        source = OUT / f"{args.data}-{base}-e{args.epochs}-s{args.ae_seed}.pt"
        code_dim = load_model(source)[0].spec.code_dim
        config = replace(config, epochs=args.refine_epochs, clusters=k, init_from=str(source), code_dim=code_dim)
    spec = ModelSpec(height=height, width=width, code_dim=config.code_dim, clusters=config.clusters)
    model, seconds = train_plain(config, spec, train_images, train_images if base else None)
    save_model(OUT / f"{args.data}-{name}-e{args.epochs}-s{args.ae_seed}.pt", model)
    codes = encode(model, test_images)
    with torch.no_grad():
        mse = float(torch.nn.functional.mse_loss(model.decoder(codes), scale_images(torch.from_numpy(test_images))))
    row = {"recipe": name, **kmeans_scores(codes.numpy(), labels, k, args.seeds), "test_mse": mse, "seconds": seconds}
    if base:  # the refined model's own clusters: each image's most likely centroid
        own = soft_assignment(codes, model.centroids.detach()).argmax(1).numpy()
        row["idec_own_acc"] = class_agreement(labels, own)["acc"]
    return row


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
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    data = fashion(args.images) if args.data == "fashion" else faces()
    for name in args.recipes.split(","):
        print(f"[recipes] {args.data}: {name}", flush=True)
        row = {**measure(name, args, data), "data": args.data, "epochs": args.epochs, "ae_seed": args.ae_seed,
               "images": len(data[0])}
        with open(OUT / f"{args.data}.jsonl", "a") as log:
            log.write(json.dumps(row) + "\n")
        extra = f" | IDEC's own clusters ACC {row['idec_own_acc']:.3f}" if "idec_own_acc" in row else ""
        print(f"| {name} | {row['acc']:.3f} | {row['nmi']:.3f} | {row['ari']:.3f} | {row['test_mse']:.4f} | "
              f"{row['seconds']:.0f} |{extra}", flush=True)


if __name__ == "__main__":
    main()
