"""KMeans fits: scikit-learn's KMeans and MiniBatchKMeans against faiss, on the same points.

    python -m benchmarks.kmeans [--quick] [--features TABLE] [--k 10] [--repeats 3]

The points: Fashion-MNIST's 70,000 images as pixels in [0, 1] (784-d), or a feature table. One fit
per seed (n_init=1, as the sweep fits), every library with the machine's cores: wall seconds, the
inertia all three minimise (the within-cluster sum of squares, computed the same way for each) and
ACC against the classes. The sweep's clusterer is the one that is fastest at equal inertia.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import Table, benchmark_parser, cpu_count, log, median, spread


def fitters(k: int, n: int) -> dict:
    """name -> fit(X, seed) -> labels."""
    import faiss
    from sklearn.cluster import KMeans, MiniBatchKMeans

    def faiss_fit(X: np.ndarray, seed: int) -> np.ndarray:
        model = faiss.Kmeans(X.shape[1], k, niter=50, seed=seed, max_points_per_centroid=n)  # all points
        model.train(X)
        return model.index.search(X, 1)[1][:, 0]

    return {
        "scikit-learn KMeans (Lloyd, n_init=1)": lambda X, seed: KMeans(k, n_init=1, random_state=seed).fit_predict(X),
        "scikit-learn MiniBatchKMeans (batch 4096)": lambda X, seed: MiniBatchKMeans(
            k, n_init=1, batch_size=4096, random_state=seed).fit_predict(X),
        "faiss Kmeans (50 iterations)": faiss_fit,
    }


def points(features: str | None, rows: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    if features:
        from pipelines.feature_table import read_features

        table = read_features(features)
        return table.X[:rows], table.labels[:rows], f"feature table {features}"
    from pipelines.data import fashion_mnist_arrays

    parts = [fashion_mnist_arrays(split) for split in ("train", "test")]
    X = np.concatenate([images for images, _ in parts]).reshape(70_000, -1)[:rows].astype(np.float32) / 255
    return np.ascontiguousarray(X), np.concatenate([labels for _, labels in parts])[:rows], "Fashion-MNIST pixels"


def run(quick: bool = False, features: str | None = None, k: int = 10, repeats: int | None = None) -> list[Table]:
    from pipelines.measures import clustering_accuracy
    from pipelines.transforms import within_cluster_sum_of_squares

    X, classes, source = points(features, 10_000 if quick else None)
    repeats = repeats or (1 if quick else 3)
    table = Table(f"KMeans fits: {source}, {len(X):,} x {X.shape[1]}, k = {k}, {cpu_count()} cores, "
                  f"{repeats} seeds", ["library", "seconds per fit", "speed (scikit-learn KMeans = 1)",
                                       "inertia / scikit-learn's", "ACC"])
    baseline: dict = {}
    for name, fit in fitters(k, len(X)).items():
        seconds, inertia, acc = [], [], []
        for seed in range(repeats):
            started = time.perf_counter()
            labels = fit(X, seed)
            seconds.append(time.perf_counter() - started)
            inertia.append(within_cluster_sum_of_squares(X, labels))
            acc.append(clustering_accuracy(classes, labels))
        log(f"kmeans: {name}: {median(seconds):.2f} s per fit")
        baseline = baseline or {"seconds": median(seconds), "inertia": median(inertia)}
        table.add(name, spread(seconds, 2), f"{baseline['seconds'] / median(seconds):.2f}",
                  f"{median(inertia) / baseline['inertia']:.4f}", f"{median(acc):.3f}")
    return [table]


def main() -> None:
    parser = benchmark_parser(__doc__, "10,000 rows, one seed")
    parser.add_argument("--features", default=None, help="a feature table instead of Fashion-MNIST's pixels")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    for table in run(args.quick, args.features, args.k, args.repeats):
        print(table.markdown())


if __name__ == "__main__":
    main()
