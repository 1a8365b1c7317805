"""Determinism: the same 1-worker CPU training run, seed fixed, gives the same losses and the
same weights, bit for bit.

That the same seeds give identical KMeans labels and stability tables (Tune trials vs Tune trials,
and vs the sequential loop) is tested in test_stability.py (test_the_same_seeds_give_the_same_results,
test_the_sequential_loop_does_what_the_tune_trials_do); it is not repeated here."""

from __future__ import annotations

from pipelines.config import DataConfig, TrainConfig
from pipelines.model import fingerprint, load_model
from pipelines.train import train


def test_fixed_seed_one_worker_training_is_repeatable(ray_session, faces_dir, tmp_path):
    """Two Ray Train runs, limit 256, 1 epoch, 1 worker, on an image folder: it reaches the worker
    as many small blocks decoded by parallel Ray Data tasks, which finish in another order on each
    run, and its batches are formatted in Ray Data's thread pool, which reorders them too (the
    latter alone made two Fashion-MNIST runs differ in the 4th digit of the loss)."""
    data = DataConfig(dataset="images", data_dir=str(faces_dir), image_size="28x28", limit=256)
    config = TrainConfig(epochs=1, workers=1, batch_size=32, seed=3)
    first = train(data, config, tmp_path / "first")
    second = train(data, config, tmp_path / "second")
    keys = ("train_loss", "test_loss", "train_images", "test_images")
    assert [{key: row[key] for key in keys} for row in first.history] == [
        {key: row[key] for key in keys} for row in second.history
    ]
    assert fingerprint(load_model(first.run_dir)[0]) == fingerprint(load_model(second.run_dir)[0])
