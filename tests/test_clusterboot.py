"""Bootstrap Jaccard against R's ``fpc::clusterboot`` (Hennig's own implementation), run for real.

* Replay: R's drawn points and the partitions its clusterer found on them, exported from inside
  clusterboot, go through :func:`pipelines.measures.bootstrap_jaccard`; the per-resample
  Jaccards and means must be clusterboot's to rounding.
* End to end: our draws and sklearn's KMeans against R's draws and kmeansCBI, the reference
  partition held equal; the per-cluster means must agree within Monte-Carlo noise.

The data hold a lone far point, its own cluster: a bootstrap misses it about 37% of the time,
which clusterboot scores 0 (and counts). A missing Rscript fails these tests; they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from pipelines.measures import bootstrap_indices, bootstrap_jaccard, mean_jaccard_per_cluster, resample_stability

K, R_SEED = 4, 20260101
INSTALL = "apt-get install -y r-base-core r-cran-fpc"

# clusterboot keeps the matrix's row names when it subsets the rows, so a wrapper around
# kmeansCBI can record which rows every call saw; call 1 is the reference clustering.
R_SCRIPT = """
suppressPackageStartupMessages(library(fpc))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1], header = FALSE))
rownames(X) <- seq_len(nrow(X))
calls <- list()
recorded <- function(data, k) {
  out <- kmeansCBI(data, krange = k, runs = 10)
  calls[[length(calls) + 1]] <<- data.frame(call = length(calls) + 1, row = as.integer(rownames(data)),
                                             cluster = out$partition)
  out
}
cb <- clusterboot(X, B = as.integer(args[3]), bootmethod = "boot", clustermethod = recorded, k = %(k)d,
                  seed = %(seed)d, count = FALSE, showplots = FALSE)
write.csv(do.call(rbind, calls), file.path(args[2], "calls.csv"), row.names = FALSE)
write.csv(cb$bootresult, file.path(args[2], "bootresult.csv"), row.names = FALSE)
write.csv(data.frame(mean = cb$bootmean), file.path(args[2], "bootmean.csv"), row.names = FALSE)
""" % {"k": K, "seed": R_SEED}


def points() -> np.ndarray:
    """Two overlapping blobs, a far one, and a lone outlier (150 points)."""
    rng = np.random.default_rng(3)
    blobs = [rng.normal(centre, 1.0, size=(size, 2)) for centre, size in (((0, 0), 60), ((3, 0), 50), ((12, 12), 39))]
    return np.vstack([*blobs, [[40.0, 40.0]]])


def run_clusterboot(X: np.ndarray, folder: Path, resamples: int) -> dict[str, pd.DataFrame]:
    if shutil.which("Rscript") is None:
        pytest.fail(f"Rscript is missing: the clusterboot comparison needs R with fpc ({INSTALL})")
    np.savetxt(folder / "X.csv", X, delimiter=",", fmt="%.17g")
    (folder / "clusterboot.R").write_text(R_SCRIPT)
    done = subprocess.run(["Rscript", str(folder / "clusterboot.R"), str(folder / "X.csv"), str(folder),
                           str(resamples)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        hint = f" (is fpc installed? {INSTALL})" if "fpc" in done.stderr else ""
        pytest.fail(f"Rscript failed{hint}: {done.stderr.strip()}")
    return {name: pd.read_csv(folder / f"{name}.csv") for name in ("calls", "bootresult", "bootmean")}


@pytest.fixture(scope="module")
def clusterboot_run(tmp_path_factory):
    X = points()
    return X, run_clusterboot(X, tmp_path_factory.mktemp("clusterboot"), resamples=100)


def partitions(calls: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows drawn, 0-based, in R's order; the clusters found on them) per call of the clusterer."""
    return [(group["row"].to_numpy() - 1, group["cluster"].to_numpy()) for _, group in calls.groupby("call")]


def test_replaying_clusterboots_draws_and_partitions_gives_its_numbers(clusterboot_run):
    X, r = clusterboot_run
    (all_rows, reference), *resamples = partitions(r["calls"])
    assert all_rows.tolist() == list(range(len(X))) and len(resamples) == 100
    # multipleboot=FALSE: R's clusterer saw each drawn point once.
    assert all(len(np.unique(rows)) == len(rows) < len(X) for rows, _ in resamples)
    ours = bootstrap_jaccard(reference, resamples)
    np.testing.assert_allclose(ours, r["bootresult"].to_numpy().T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean_jaccard_per_cluster(ours), r["bootmean"]["mean"], rtol=0, atol=1e-12)
    # The outlier's cluster was missed by some resamples, and they count as 0 in both.
    outlier = reference[-1] - 1
    assert 0.5 < r["bootmean"]["mean"][outlier] < 0.8 and (ours[:, outlier] == 0).any()


def test_our_bootstrap_agrees_with_clusterboot_within_monte_carlo_noise(clusterboot_run):
    X, r = clusterboot_run
    reference = partitions(r["calls"])[0][1]  # the reference partition held equal

    def fit_predict(X_resample: np.ndarray, resample_no: int) -> np.ndarray:
        return KMeans(n_clusters=K, n_init=10, random_state=resample_no).fit_predict(X_resample)

    with threadpool_limits(1):  # 150 points: threads cost more than they save (18 s -> 1 s)
        ours = resample_stability(X, fit_predict, reference, bootstrap_indices(len(X), 100, seed=0))
    theirs = r["bootresult"].to_numpy()
    r_se = theirs.std(axis=1, ddof=1) / np.sqrt(theirs.shape[1])
    noise = np.sqrt(ours["se_jaccard"] ** 2 + r_se**2)
    gap = np.abs(ours["mean_jaccard"] - r["bootmean"]["mean"].to_numpy())
    print("ours", ours["mean_jaccard"].round(3), "+-", ours["se_jaccard"].round(3))
    print("clusterboot", r["bootmean"]["mean"].to_numpy().round(3), "+-", r_se.round(3))
    assert (gap <= 3 * noise + 1e-9).all(), (ours["mean_jaccard"], r["bootmean"]["mean"].tolist(), noise)
    assert (ours["se_jaccard"] <= 0.05).all()


def test_a_missing_rscript_fails_with_the_command_that_installs_it(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y r-base-core r-cran-fpc"):
        run_clusterboot(points(), tmp_path, resamples=2)
