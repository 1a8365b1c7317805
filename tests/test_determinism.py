"""Determinism and resumption: a seeded CPU training run stopped after epoch 2 and rerun ends
with the weights of the uninterrupted run, bit for bit.

That the same seeds give identical KMeans labels and stability tables (Tune trials vs Tune trials,
and vs the sequential loop) is tested in test_stability.py (test_the_same_seeds_give_the_same_results,
test_the_sequential_loop_does_what_the_tune_trials_do); a worker killed mid-epoch in test_faults.py."""

from __future__ import annotations

import dataclasses
import json

from pipelines.model import fingerprint, load_model
from pipelines.rundir import METRICS_FILE
from pipelines.train import train

KEYS = ("epoch", "train_loss", "test_loss", "train_images", "test_images")


def test_a_run_resumed_after_epoch_2_ends_with_the_uninterrupted_runs_weights(reference_training, tmp_path):
    data, config, reference = reference_training
    run_dir = tmp_path / "resumed"
    first = train(data, dataclasses.replace(config, epochs=2), run_dir)
    resumed = train(data, config, run_dir)
    assert not resumed.resumed and [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history  # epochs 1 and 2 were not trained again
    assert [json.loads(line)["epoch"] for line in (run_dir / METRICS_FILE).read_text().splitlines()] == [1, 2, 3]
    assert [{key: row[key] for key in KEYS} for row in resumed.history] == [
        {key: row[key] for key in KEYS} for row in reference.history
    ]
    assert fingerprint(load_model(run_dir)[0]) == fingerprint(load_model(reference.run_dir)[0])
    assert load_model(run_dir)[1]["epochs"] == 3


def test_a_rerun_of_a_finished_run_does_nothing_and_says_so(reference_training, capsys):
    data, config, reference = reference_training
    again = train(data, config, reference.run_dir)
    assert again.resumed and again.history == reference.history
    assert "already holds 3 epochs; nothing to do" in capsys.readouterr().out
