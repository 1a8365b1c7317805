"""The command lines: a newcomer's mistakes fail in a second, in one line naming the option or
the file, with exit status 2 and nothing written; --help is plain; paths work from any folder.

The jobs' main(argv) runs in-process from a relative working directory (tmp_path): no Ray starts,
since every check here comes before it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from jobs import extract as extract_job
from jobs import pipeline as pipeline_job
from jobs import recluster as recluster_job
from jobs import stability as stability_job
from jobs import train as train_job
from pipelines.config import DataConfig

JOBS = {"train": train_job, "extract": extract_job, "stability": stability_job, "recluster": recluster_job,
        "pipeline": pipeline_job}


def fails(job: str, argv: list[str], capsys) -> tuple[str, float]:
    """Run ``job`` with ``argv``; it must exit 2 with one line on stderr and nothing on stdout.
    Returns (the line, seconds)."""
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        JOBS[job].main(argv)
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"featurelens {job}: error: "), err
    assert out == "", out
    return lines[0], seconds


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder, the current directory; the jobs' paths are relative to it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def small_faces(faces_dir: Path, root: Path, people: int = 3, per_person: int = 4) -> Path:
    for person in range(1, people + 1):
        (root / f"s{person}").mkdir(parents=True)
        for n in range(1, per_person + 1):
            shutil.copy(faces_dir / f"s{person}" / f"{n}.pgm", root / f"s{person}")
    return root


def written(work: Path, *inputs: str) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name not in inputs)


# --- the five mistakes of issue 16: each in under five seconds, naming the option or file ---------------

FAST = 5.0


def test_a_wrong_data_dir_is_named(work, capsys):
    line, seconds = fails("pipeline", ["--out", "runs/faces", "--dataset", "images", "--data-dir", "no/faces"], capsys)
    assert "--data-dir no/faces: no such folder" in line
    assert seconds < FAST and written(work) == []


@pytest.mark.parametrize("job", ["pipeline", "train"])
def test_images_without_data_dir_is_named(job, work, capsys):
    line, seconds = fails(job, ["--out", "runs/faces", "--dataset", "images"], capsys)
    assert "--dataset images needs --data-dir" in line
    assert seconds < FAST and written(work) == []


def test_a_text_file_named_png_is_named(work, faces_dir, capsys):
    small_faces(faces_dir, work / "faces")
    (work / "faces" / "s2" / "x.png").write_text("this is text, not a PNG\n")
    line, seconds = fails("pipeline", ["--out", "runs/faces", "--dataset", "images", "--data-dir", "faces",
                                       "--image-size", "28x28"], capsys)
    assert "1 unreadable image(s)" in line and str(work / "faces" / "s2" / "x.png") in line
    assert "--on-bad-image skip" in line
    assert seconds < FAST and written(work, "faces") == []


def test_a_recluster_k_outside_the_sweep_is_refused_at_config_time(work, capsys):
    line, seconds = fails("pipeline", ["--out", "runs/x", "--stability-k", "2,3", "--recluster-k", "40"], capsys)
    assert "--recluster-k 40 is not among the k of the sweep (--stability-k 2,3)" in line
    assert seconds < FAST and written(work) == []


def test_a_recluster_k_outside_a_config_files_sweep_is_refused(work, capsys):
    (work / "tiny.toml").write_text('[stability]\nk = "2-5"\n[recluster]\nk = 10\n')
    line, _ = fails("pipeline", ["--out", "runs/x", "--config", "tiny.toml"], capsys)
    assert "--recluster-k 10" in line and written(work, "tiny.toml") == []


def test_an_image_size_the_model_does_not_take_is_refused_before_ray(work, faces_dir, capsys):
    from pipelines.model import Autoencoder, ModelSpec, save_model

    small_faces(faces_dir, work / "faces")
    save_model(work / "model.pt", Autoencoder(ModelSpec(28, 28, 1, 3)))
    line, seconds = fails("extract", ["--checkpoint", "model.pt", "--dataset", "images", "--data-dir", "faces",
                                      "--image-size", "32x32", "--out", "features"], capsys)
    assert "the model takes 28x28x1: pass --image-size 28x28 --color L" in line
    assert seconds < FAST and written(work, "faces", "model.pt") == []


def test_a_missing_checkpoint_is_named(work, capsys):
    line, _ = fails("extract", ["--checkpoint", "runs/ae", "--out", "features"], capsys)
    assert "--checkpoint runs/ae: no such file or folder" in line and written(work) == []


# --- the command line itself ---------------------------------------------------------------------------------


def test_an_unknown_option_suggests_the_closest_in_one_line(work, capsys):
    line, _ = fails("pipeline", ["--out", "run", "--train-epoch", "4"], capsys)
    assert "unknown option --train-epoch (did you mean --train-epochs?)" in line  # not an abbreviation
    line, _ = fails("train", ["--out", "run", "--epoch", "4"], capsys)
    assert "did you mean --epochs?" in line


def test_errors_name_the_option_as_typed(work, capsys):
    assert "--stability-k 10-2: the range 10-2 runs backwards; write 2-10" in fails(
        "pipeline", ["--out", "run", "--stability-k", "10-2"], capsys)[0]
    assert "--stability-k must be >= 2" in fails("pipeline", ["--out", "run", "--stability-k", "1-4"], capsys)[0]
    assert "--k must be >= 2" in fails("stability", ["--features", ".", "--out", "st", "--k", "1-3"], capsys)[0]
    assert "--image-size must be at least 8x8" in fails("train", ["--out", "run", "--image-size", "3x3"], capsys)[0]
    assert "invalid choice: 'rotate'" in fails("train", ["--out", "run", "--augment", "rotate"], capsys)[0]
    assert written(work) == []


@pytest.mark.parametrize("job", list(JOBS))
def test_help_shows_choices_one_default_plain_titles_and_the_real_name(job, capsys):
    with pytest.raises(SystemExit) as exit_:
        JOBS[job].main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert text.startswith(f"usage: python -m jobs.{job} ")
    assert "(default: None)" not in text and "STR" not in text and "Config" not in text
    for line in text.splitlines():
        assert line.count("default") <= 1, line
    if job in ("train", "pipeline"):
        assert "{autoencoder,classifier}" in text and "training options" in text
    assert "--out DIR" in text


def test_overwrite_is_a_plain_flag_everywhere(capsys):
    for job in ("extract", "stability", "recluster"):
        with pytest.raises(SystemExit):
            JOBS[job].main(["--help"])
        text = capsys.readouterr().out
        assert "--overwrite" in text and "--no-overwrite" not in text, job


# --- paths: relative ones from any folder; refused under `ray job submit` ---------------------------------------


def test_a_relative_out_under_ray_job_submit_is_refused(work, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    job_config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}  # as `ray job submit` sets it
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job_config))
    line, _ = fails("pipeline", ["--out", "runs/x"], capsys)
    assert "--out runs/x: a relative path under `ray job submit`" in line and "absolute path" in line


def test_output_paths_are_made_absolute_at_the_edge(work):
    from pipelines.cli import output_path

    assert output_path("runs/x", "--out") == work / "runs" / "x"


# --- --limit: every class, stably ------------------------------------------------------------------------------


def test_limit_samples_every_class_stably(faces_dir):
    from pipelines.data import list_image_folder, split_manifest

    folder, classes = list_image_folder(faces_dir)
    config = DataConfig(dataset="images", data_dir=str(faces_dir), limit=40)
    picked = split_manifest(folder, "train", config)
    assert picked.num_rows == 40 and sorted(set(picked["label"].to_pylist())) == list(range(len(classes)))
    assert split_manifest(folder, "train", config)["path"].to_pylist() == picked["path"].to_pylist()


# --- the pipeline resumes: more epochs continue training, a new k is computed alone ------------------------------


def finished_run(run_dir: Path, epochs: int) -> None:
    """The marker files of a finished run directory (what stage_done looks at)."""
    from pipelines.rundir import STAGE_DIRS

    for folder in STAGE_DIRS.values():
        (run_dir / folder).mkdir(parents=True)
    (run_dir / "train" / "model.pt").write_bytes(b"")
    metrics = "".join(json.dumps({"epoch": epoch}) + "\n" for epoch in range(1, epochs + 1))
    (run_dir / "train" / "metrics.jsonl").write_text(metrics)
    (run_dir / "stability" / "summary.csv").write_text("k\n")
    (run_dir / "recluster" / "groups.json").write_text("{}")
    (run_dir / "report" / "report.html").write_text("")


@pytest.mark.parametrize("change, resumed", [({"train": {"epochs": 4}}, "train"),
                                             ({"stability": {"k": "2-4"}}, "stability")])
def test_a_finished_pipeline_resumes_from_the_changed_stage(change, resumed, tmp_path):
    from pipelines.pipeline import (PipelineConfig, changed_options, check_config_unchanged, merge, stages_to_run,
                                    to_toml)
    from pipelines.rundir import STAGES

    base = {"train": {"epochs": 3}, "stability": {"k": "2-3"}}
    finished_run(tmp_path, epochs=3)
    (tmp_path / "config.toml").write_text(to_toml(PipelineConfig.from_dict(base).to_dict()))
    config = PipelineConfig.from_dict(merge(base, change))
    changed = changed_options(tmp_path, config)
    pending = stages_to_run(tmp_path, config, None, changed)
    assert pending == list(STAGES[STAGES.index(resumed):])
    check_config_unchanged(tmp_path, changed, [s for s in STAGES if s not in pending], pending[0])  # no refusal


def test_a_finished_pipeline_with_a_longer_autoscaler_wait_or_other_file_sizes_computes_nothing(tmp_path):
    from pipelines.pipeline import PipelineConfig, changed_options, merge, stages_to_run, to_toml

    base = {"train": {"epochs": 3}, "stability": {"k": "2-3"}}
    finished_run(tmp_path, epochs=3)
    (tmp_path / "config.toml").write_text(to_toml(PipelineConfig.from_dict(base).to_dict()))
    waits = {section: {"resource_timeout": 5.0} for section in ("train", "extract", "stability")}
    config = PipelineConfig.from_dict(merge(base, merge(waits, {"extract": {"rows_per_file": 100}})))
    assert changed_options(tmp_path, config) == {}
    assert stages_to_run(tmp_path, config, None, {}) == []
    other_batches = PipelineConfig.from_dict(merge(base, {"extract": {"batch_size": 100}}))
    assert changed_options(tmp_path, other_batches) == {"extract.batch_size": (512, 100)}


# --- a quiet terminal: featurelens's lines, with progress; Ray's to the log file ---------------------------------


def test_progress_lines_show_a_bar_the_rate_and_the_time_left():
    from pipelines.progress import Progress, progress_line

    line = progress_line("[train] epoch 2/5", 120, 268, "batches", 4.0)
    assert line.startswith("[train] epoch 2/5 [#########") and "45%" in line and "120/268 batches" in line
    assert "30.0 batches/s" in line and "ETA 5 s" in line and "\x1b" not in line
    shown: list[str] = []
    progress = Progress("[extract] faces", unit="images", every=3600, emit=shown.append)
    for done in range(1, 101):
        progress.update(done, 100)
    assert len(shown) == 1 and "50%" in shown[0]  # a short step: once, half way; the caller prints the end


def test_worker_lines_of_ours_reach_the_terminal_once_and_the_rest_the_log(tmp_path, capsys):
    import logging

    from ray._private import worker as ray_worker

    from pipelines.runtime import detach, log_handlers, quiet_terminal

    original = ray_worker.print_worker_logs
    loggers = [logging.getLogger(name) for name in ("", "ray", "ray.data", "py.warnings", "featurelens")]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    try:
        quiet_terminal(tmp_path / "run" / "featurelens.log")
        line = "[train] epoch 1/3  train loss 0.02697  test loss 0.01800  38 images/s"
        for _ in range(2):  # Ray Train relays each line twice
            ray_worker.print_worker_logs({"pid": 7, "actor_name": "RayTrainWorker", "lines": [line]}, None)
        ray_worker.print_worker_logs({"pid": 8, "lines": ["TrainingReport(metrics={...})"]}, None)
        logging.getLogger("ray.data").warning("The Dataset job will hang unless more CPUs are freed up")
        out = capsys.readouterr().out.splitlines()
        assert out == [f"featurelens: Ray's and the libraries' logs go to {tmp_path / 'run' / 'featurelens.log'}", line]
        log = (tmp_path / "run" / "featurelens.log").read_text()
        assert "TrainingReport" in log and "will hang" in log
    finally:
        ray_worker.print_worker_logs = original
        for handler in log_handlers():
            detach(handler)
        for logger, (handlers, propagate) in zip(loggers, saved):  # as they were, for the tests after this one
            logger.handlers, logger.propagate = handlers, propagate
        logging.captureWarnings(False)
