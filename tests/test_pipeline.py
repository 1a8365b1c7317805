"""The pipeline job end to end on a tiny real run and its resume rules (the report: tests/test_report.py)."""

import json
import shutil
import subprocess
import sys

import pytest

from pipelines.config import DataConfig, ExtractConfig, ReclusterConfig, StabilityConfig, TrainConfig
from pipelines.pipeline import PipelineConfig, changed_options, check_config_unchanged, run_pipeline, stages_to_run
from pipelines.rundir import STAGES


def tiny_config() -> PipelineConfig:
    """The settings of the shared `tiny_run` (so its training is reused) and a small sweep."""
    return PipelineConfig(
        data=DataConfig(limit=1024),
        train=TrainConfig(epochs=2, workers=2, batch_size=64),
        extract=ExtractConfig(split="test"),
        stability=StabilityConfig(k="2-4", seeds=3, resamples=3),
        recluster=ReclusterConfig(k=2, k_re=2),
    )


@pytest.fixture(scope="module")
def pipeline_run(tiny_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    shutil.copytree(tiny_run, run_dir / "train")  # the train stage finds its output and is skipped
    run_pipeline(tiny_config(), run_dir)
    return run_dir


def test_every_stage_leaves_its_output_and_time(pipeline_run):
    stages = json.loads((pipeline_run / "stages.json").read_text())
    assert list(stages) == ["extract", "stability", "recluster", "report"]  # train was already done
    assert all(info["seconds"] > 0 and info["summary"] for info in stages.values())
    assert "feature rows" in stages["extract"]["summary"] and "report at" in stages["report"]["summary"]
    for path in ("config.toml", "features", "stability/summary.csv", "recluster/groups.json", "report/report.html", "report/report.md"):
        assert (pipeline_run / path).exists(), path
    assert "epochs = 2" in (pipeline_run / "config.toml").read_text()
    groups = json.loads((pipeline_run / "recluster" / "groups.json").read_text())
    assert groups["k"] == 2 and groups["groups"]


def test_rerun_of_a_finished_pipeline_does_nothing_and_says_so(pipeline_run, capsys):
    before = {p: p.stat().st_mtime for p in pipeline_run.rglob("*") if p.is_file()}
    run_pipeline(tiny_config(), pipeline_run)
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime for p in pipeline_run.rglob("*") if p.is_file()} == before


def test_changed_options_of_a_finished_stage_are_refused(pipeline_run):
    config = tiny_config()
    config.stability = StabilityConfig(k="2-4", seeds=4, resamples=3)
    with pytest.raises(ValueError, match=r"--stability-seeds: 3 -> 4.*--from stability"):
        run_pipeline(config, pipeline_run)


def test_more_epochs_continue_the_training_and_recompute_what_follows(pipeline_run):
    config = tiny_config()
    config.train = TrainConfig(epochs=3, workers=2, batch_size=64)
    changed = changed_options(pipeline_run, config)
    assert changed == {"train.epochs": (2, 3)}
    assert stages_to_run(pipeline_run, config, None, changed) == list(STAGES)
    check_config_unchanged(pipeline_run, changed, kept=[], resumed="train")  # not refused: training goes on
    config.train = TrainConfig(epochs=3, workers=2, batch_size=32)
    with pytest.raises(ValueError, match=r"stage 'train' ran with other options \(--train-batch-size: 64 -> 32"):
        check_config_unchanged(pipeline_run, changed_options(pipeline_run, config), kept=[], resumed="train")


def test_a_new_k_is_added_to_the_sweep_and_the_k_computed_before_are_kept(pipeline_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline_run, run_dir)
    per_k = {path: path.stat().st_mtime_ns for path in (run_dir / "stability" / "per_k").rglob("*") if path.is_file()}
    config = tiny_config()
    config.stability = StabilityConfig(k="2-5", seeds=3, resamples=3)
    run_pipeline(config, run_dir)
    assert {path: path.stat().st_mtime_ns for path in per_k} == per_k
    assert (run_dir / "stability" / "per_k" / "k=05" / "result.json").exists()
    assert (run_dir / "stability" / "assignments" / "k05").is_dir()
    stages = json.loads((run_dir / "stages.json").read_text())
    assert "computed 1 k, reused 3" in stages["stability"]["summary"]


def test_from_stage_recomputes_that_stage_and_later(pipeline_run):
    features_mtime = (pipeline_run / "features").stat().st_mtime
    report_mtime = (pipeline_run / "report" / "report.html").stat().st_mtime
    run_pipeline(tiny_config(), pipeline_run, from_stage="report")
    assert (pipeline_run / "features").stat().st_mtime == features_mtime
    assert (pipeline_run / "report" / "report.html").stat().st_mtime > report_mtime


def test_pipeline_help_shows_every_option_with_its_default():
    out = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--dataset", "--train-epochs", "--extract-split", "--stability-seeds", "--recluster-k-re", "--from",
                 "--train-lr-schedule", "--stability-transform", "--stability-clusterer", "--stability-compare-runs"):
        assert flag in out
    assert "(default: 2-10)" in out
    assert "80%-subsample" in out and "option_strings" not in out  # a literal % survives argparse


def test_every_preset_is_a_valid_config_and_an_unknown_one_is_refused_by_name():
    from pipelines.pipeline import load_config_file, preset_path, presets

    assert "fashion-mnist" in presets()
    for name in presets():
        PipelineConfig.from_dict(load_config_file(preset_path(name)))  # raises on an unknown option
    out = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--run-dir", "unused", "--preset", "nope"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown preset 'nope'; the presets are fashion-mnist" in out.stderr
