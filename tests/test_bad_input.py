"""Bad input: every kind ends in one clear error (exit 2 from the jobs) naming the file, column or
option, and leaves no partial output; ``--on-bad-image skip`` lists what it left out.

The image folders are built in tmp_path from real ORL faces plus the bad files. The job tests run
the real command lines in a subprocess. Most that need Ray join the session's cluster
(RAY_ADDRESS) and run from the repository, which Ray puts on its workers' path (this venv does
not install the package); the security test's training job starts its own Ray from an empty
folder, so that anything its workers write to a relative path would land there too."""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cli import error_summary, root_cause, run_job
from pipelines.config import DataConfig, ExtractConfig, TrainConfig
from pipelines.data import (SKIPPED_IMAGES_FILE, DataError, check_source, decode_images, failing_on_bad_images,
                            folder_decode, load_images)
from pipelines.model import Autoencoder, ModelSpec, save_model

REPO = Path(__file__).resolve().parents[1]
BAD_FILES = {  # kind: (file, what the error says about it)
    "corrupt": ("s1/corrupt.pgm", "cannot decode"),
    "zero-byte": ("s1/empty.pgm", "empty file (0 bytes)"),
    "non-image": ("s2/x.png", "cannot decode"),
    "stray text file": ("s2/notes.txt", "not an image file"),
}


def copy_faces(faces_dir: Path, root: Path, people: int = 2, per_person: int = 3) -> Path:
    """``people`` classes of ``per_person`` real ORL faces, as a class-folder tree under ``root``."""
    for person in range(1, people + 1):
        (root / f"s{person}").mkdir(parents=True)
        for n in range(1, per_person + 1):
            shutil.copy(faces_dir / f"s{person}" / f"{n}.pgm", root / f"s{person}" / f"{n}.pgm")
    return root


def add_bad_file(root: Path, kind: str, faces_dir: Path) -> Path:
    relative, _ = BAD_FILES[kind]
    path = root / relative
    if kind == "corrupt":  # a real face cut off after a third of its bytes
        raw = (faces_dir / "s1" / "1.pgm").read_bytes()
        path.write_bytes(raw[: len(raw) // 3])
    elif kind == "zero-byte":
        path.touch()
    elif kind == "non-image":
        path.write_text("this is text, not a PNG\n")
    else:
        path.write_text("notes about s2\n")
    return path


def run_module(module: str, *arguments: str, cwd: Path, ray_address: str | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module arguments`` as a user runs it, from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_clear_error(result: subprocess.CompletedProcess, job: str, *expected: str) -> str:
    """Exit 2; stderr ends with the job's one error message (before it, at most Ray Data's
    progress log of a scan that ran), and holds no traceback. Returns the message."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    head = f"featurelens {job}: error: "
    assert result.stderr.count(head) == 1, result.stderr[-3000:]
    message = result.stderr[result.stderr.index(head):]
    assert message.startswith(head) and (result.stderr.startswith(head) or "\n" + head in result.stderr)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in message, (text, message)
    return message


@pytest.fixture(scope="module")
def ray_address(ray_session) -> str:
    return ray_session.get_runtime_context().gcs_address


# --- image folders (library level) -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_image_is_named_by_the_stages_decode_and_skip_lists_it(kind, faces_dir, tmp_path, ray_session):
    """Loading decodes nothing; the decode of the stage that reads the data is the check."""
    root = copy_faces(faces_dir, tmp_path / "faces")
    bad = add_bad_file(root, kind, faces_dir)
    source = load_images(DataConfig(dataset="images", data_dir=str(root), image_size="28x28"), "all")
    with pytest.raises(DataError, match="1 unreadable image") as error, failing_on_bad_images(source):
        source.dataset.materialize()
    assert f"{bad}: {BAD_FILES[kind][1]}" in str(error.value)
    assert "--on-bad-image skip" in str(error.value)

    source = load_images(DataConfig(dataset="images", data_dir=str(root), image_size="28x28", on_bad_image="skip"), "all")
    assert source.skipped == [] and source.num_images == 7  # every file listed, none decoded yet
    batch = source.dataset.take_batch(100)
    assert sorted(batch["path"]) == sorted(str(p) for p in root.glob("s*/[0-9].pgm"))
    assert [path for path, _ in source.skipped] == [str(bad)]
    assert BAD_FILES[kind][1] in source.skipped[0][1]


def test_every_bad_image_is_listed_by_the_check_before_ray(faces_dir, tmp_path):
    """The headers first (a text file named .png, an empty file); once one is bad, the full
    decode of the rest names the truncated file too."""
    root = copy_faces(faces_dir, tmp_path / "faces")
    bad = [add_bad_file(root, kind, faces_dir) for kind in BAD_FILES]
    with pytest.raises(DataError, match=f"{len(bad)} unreadable image") as error:
        check_source(DataConfig(dataset="images", data_dir=str(root), image_size="28x28"))
    for path in bad:
        assert str(path) in str(error.value)
    check_source(DataConfig(dataset="images", data_dir=str(copy_faces(faces_dir, tmp_path / "good"))))


def test_a_bad_image_fails_the_extraction_and_leaves_no_table(faces_dir, tmp_path, ray_session):
    """A truncated file, which no header check sees, found by the extraction's own decode:
    the job ends naming it, and the table's temporary folder is not committed."""
    from pipelines.extract import extract_features

    root = copy_faces(faces_dir, tmp_path / "faces", per_person=5)
    bad = add_bad_file(root, "corrupt", faces_dir)
    save_model(tmp_path / "model.pt", Autoencoder(ModelSpec(28, 28, 1, 2)))
    with pytest.raises(DataError, match=rf"1 unreadable image\(s\) in {root}: {bad}: cannot decode"):
        extract_features(DataConfig(dataset="images", data_dir=str(root), image_size="28x28"),
                         ExtractConfig(checkpoint=str(tmp_path / "model.pt"), split="all"), tmp_path / "features")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "model.pt"]


@pytest.mark.parametrize("layout", ["empty folder", "empty class folders", "missing folder"])
def test_a_folder_without_images_is_refused_by_name(layout, tmp_path):
    root = tmp_path / "faces"
    if layout != "missing folder":
        root.mkdir()
    if layout == "empty class folders":
        (root / "s1").mkdir()
        (root / "s2").mkdir()
    with pytest.raises(DataError, match=str(root)):
        load_images(DataConfig(dataset="images", data_dir=str(root)), "all")


def test_mixed_sizes_and_modes_are_resized_as_configured(faces_dir, tmp_path, ray_session):
    from PIL import Image

    root = copy_faces(faces_dir, tmp_path / "faces", per_person=2)
    face = Image.open(faces_dir / "s3" / "1.pgm")
    face.convert("RGB").resize((50, 60)).save(root / "s1" / "rgb.png")
    face.convert("RGBA").resize((130, 101)).save(root / "s1" / "rgba.png")
    face.convert("P").save(root / "s2" / "palette.bmp")
    face.convert("RGB").save(root / "s2" / "rgb.jpg")
    for color, shape in (("L", (24, 20)), ("RGB", (24, 20, 3))):
        source = load_images(DataConfig(dataset="images", data_dir=str(root), image_size="24x20", color=color), "all")
        batch = source.dataset.take_batch(100)
        assert source.skipped == [] and source.num_images == 8
        assert batch["image"].shape == (8, *shape) and batch["image"].dtype == np.uint8
        assert (source.height, source.width, source.channels) == (24, 20, len(color))


# --- bad options (command lines; they fail before torch or Ray load) --------------------------------


@pytest.mark.parametrize(
    "option, value, named",
    [("--epochs", "-1", "--epochs"), ("--workers", "0", "--workers"), ("--limit", "0", "--limit"),
     ("--image-size", "3x3", "--image-size"), ("--on-bad-image", "ignore", "--on-bad-image"),
     ("--batch-size", "1", "--batch-size"), ("--label-smoothing", "1", "--label-smoothing"),
     ("--augment", "rotate", "--augment")],
)
def test_train_option_out_of_range_exits_2_naming_it(option, value, named, tmp_path):
    result = run_module("jobs.train", option, value, "--run-dir", "run", cwd=tmp_path, timeout=60)
    assert_one_clear_error(result, "train", named)
    assert len(result.stderr.strip().splitlines()) == 1  # nothing else: it failed before Ray and torch loaded
    assert list(tmp_path.iterdir()) == []  # no run directory


@pytest.mark.parametrize("option, value, named", [("--stability-k", "1-4", "k must be >= 2"),
                                                 ("--stability-seeds", "0", "seeds must be >= 1"),
                                                 ("--recluster-k-re", "1", "--recluster-k-re")])
def test_pipeline_option_out_of_range_exits_2_naming_it(option, value, named, tmp_path):
    result = run_module("jobs.pipeline", option, value, "--run-dir", "run", cwd=tmp_path, timeout=60)
    assert_one_clear_error(result, "pipeline", named)
    assert list(tmp_path.iterdir()) == []


def write_feature_table(path: Path, codes: np.ndarray) -> Path:
    """A feature table file as jobs.extract writes it (ids 0..n-1, labels id % 3), of ``codes``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.feature_table import feature_table

    ids = np.arange(len(codes))
    rows = pa.table({"id": ids, "label": ids % 3, "label_name": [f"c{i % 3}" for i in ids],
                     "path": pa.nulls(len(ids), pa.string())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(feature_table(rows, codes, np.zeros(len(ids), np.float32)), path)
    return path


def test_stability_job_refuses_a_bad_feature_table_by_file(tmp_path, capsys):
    """What is bad about a table is the reader's test (test_extract.py); here: the job says it in one line."""
    from jobs import stability as stability_job

    codes = np.random.default_rng(0).normal(size=(12, 512)).astype(np.float32)
    codes[3, 7], codes[8, 0] = np.nan, np.inf
    write_feature_table(tmp_path / "features" / "part-0.parquet", codes)
    named = r"2 row\(s\) with NaN or inf .*ids \[3, 8\]"
    with pytest.raises(SystemExit) as exit_:
        stability_job.main(["--features", str(tmp_path / "features"), "--out", str(tmp_path / "st"), "--k", "2-3"])
    error = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(error.splitlines()) == 1, error
    assert error.startswith("featurelens stability: error: ") and re.search(named, error), error
    assert str(tmp_path / "features") in error
    assert not (tmp_path / "st").exists()


def test_more_workers_than_the_cluster_can_place_exits_2(tmp_path, ray_address):
    result = run_module("jobs.train", "--workers", "16", "--limit", "64", "--run-dir", str(tmp_path / "run"),
                        cwd=REPO, ray_address=ray_address)
    assert_one_clear_error(result, "train", "--workers 16", "the cluster has 2")
    assert list(tmp_path.iterdir()) == []


def test_workers_that_would_leave_ray_data_no_cpu_are_refused():
    """2 workers x 1 CPU on 2 CPUs would place, then wait forever: Ray Data gets no CPU to feed them."""
    from pipelines.errors import ResourceError
    from pipelines.train import plan_resources

    with pytest.raises(ResourceError, match="leaves 0 of the cluster's 2 CPUs to Ray Data, which needs 1"):
        plan_resources(TrainConfig(workers=2, cpus_per_worker=1), cluster_cpus=2, cluster_gpus=0)
    with pytest.raises(ResourceError, match="--workers 5 x 0.25 CPUs each leaves 0.75"):
        plan_resources(TrainConfig(workers=5), cluster_cpus=2, cluster_gpus=0)


# --- bad data through the training job -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_broken_fashion_mnist_exits_2_naming_the_file_and_leaves_no_run(damage, fashion_mnist_dir, tmp_path, ray_address):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (broken / name).symlink_to(fashion_mnist_dir / name)
    if damage == "truncated":
        raw = gzip.open(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz").read()
        (broken / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2], compresslevel=1))
        expected = [f"{broken / 't10k-images-idx3-ubyte.gz'}: header says", "truncated"]
    else:  # an explicit --data-dir without the file is an error, not a cue to read another copy
        expected = [f"{broken}: not a Fashion-MNIST folder, it lacks t10k-images-idx3-ubyte.gz"]
    result = run_module("jobs.train", "--data-dir", str(broken), "--limit", "64", "--epochs", "1",
                        "--run-dir", str(tmp_path / "run"), cwd=REPO, ray_address=ray_address)
    assert len(assert_one_clear_error(result, "train", *expected).strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no run directory, no model


def test_bad_image_folder_exits_2_listing_every_bad_file_and_leaves_no_run(faces_dir, tmp_path, ray_address):
    root = copy_faces(faces_dir, tmp_path / "faces", people=4, per_person=5)
    bad = [str(add_bad_file(root, kind, faces_dir)) for kind in BAD_FILES]
    result = run_module("jobs.train", "--dataset", "images", "--data-dir", str(root), "--image-size", "28x28",
                        "--test-fraction", "0.5", "--epochs", "1", "--run-dir", str(tmp_path / "run"), cwd=REPO,
                        ray_address=ray_address)
    # All four, whichever split each falls in: the train load lists the test split's too.
    assert_one_clear_error(result, "train", "4 unreadable image(s)", "--on-bad-image skip", *bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


# --- skip mode, end to end; and the jobs write only their outputs -------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_skip_mode_lists_skipped_images_in_the_run_and_the_table_and_writes_nothing_else(
    faces_dir, tmp_path, ray_address, file_opens
):
    from pipelines.feature_table import read_features

    root = copy_faces(faces_dir, tmp_path / "faces", people=4, per_person=5)
    bad = sorted(str(add_bad_file(root, kind, faces_dir)) for kind in BAD_FILES)
    work = tmp_path / "work"
    work.mkdir()
    data_before = snapshot(root)
    data_options = ["--dataset", "images", "--data-dir", str(root), "--image-size", "28x28",
                    "--test-fraction", "0.5", "--on-bad-image", "skip"]

    # Training joins the session's Ray from ``work``: its workers run elsewhere, the relative
    # --run-dir is resolved once, at the edge. It streams (no shard cache), as a corpus too large
    # to cache would: the training files in the epoch's own order, decoded in the worker's stream.
    with file_opens(root) as training_opens:
        trained = run_module("jobs.train", *data_options, "--epochs", "1", "--workers", "1", "--batch-size", "8",
                             "--shard-cache-gib", "0", "--run-dir", "runs/faces", cwd=work, ray_address=ray_address)
    assert trained.returncode == 0, trained.stderr[-3000:]
    # One decode per image file in the stage, bad ones included; the stray .txt is refused by its name.
    decoded_once = {str(path.relative_to(root)): 1 for path in root.glob("s*/*") if path.suffix != ".txt"}
    assert dict(training_opens) == decoded_once
    run_dir = work / "runs" / "faces"
    with open(run_dir / SKIPPED_IMAGES_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["path"] for row in rows) == bad
    assert all(row["error"].startswith(row["path"] + ": ") for row in rows)
    assert (run_dir / "model.pt").is_file()

    with file_opens(root) as extraction_opens:
        extracted = run_module("jobs.extract", *data_options, "--checkpoint", str(run_dir), "--split", "all",
                               "--out", str(work / "features"), cwd=REPO, ray_address=ray_address)
    assert extracted.returncode == 0, extracted.stderr[-3000:]
    assert dict(extraction_opens) == decoded_once
    table = read_features(work / "features")
    assert sorted(entry["path"] for entry in table.metadata["skipped"]) == bad
    assert len(table) == 20  # the good images only

    # Security: the jobs wrote inside --run-dir and --out only (and the extraction's log beside
    # its table, which appears whole at the end), and never into the data.
    assert sorted(p.name for p in work.iterdir()) == ["features", "features.log", "runs"]
    assert [p.name for p in (work / "runs").iterdir()] == ["faces"]
    assert snapshot(root) == data_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "work"]


# --- extraction: the model and the images must match; checkpoints are data, not code ------------------


def test_grayscale_model_refuses_rgb_images_at_extraction(faces_dir, tmp_path, ray_session):
    from pipelines.extract import extract_features

    root = copy_faces(faces_dir, tmp_path / "faces")
    save_model(tmp_path / "model.pt", Autoencoder(ModelSpec(28, 28, 1, 2)))
    with pytest.raises(ValueError, match=r"the model takes 28x28x1: pass --image-size 28x28 --color L"):
        extract_features(DataConfig(dataset="images", data_dir=str(root), image_size="28x28", color="RGB"),
                         ExtractConfig(checkpoint=str(tmp_path / "model.pt"), split="all"), tmp_path / "features")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "model.pt"]


class Payload:
    """Unpickling this would run code."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.parametrize("case", ["another architecture", "pickled object"])
def test_extract_job_refuses_a_foreign_checkpoint(case, tmp_path):
    checkpoint = tmp_path / "model.pt"
    if case == "another architecture":
        torch.save({"spec": {"height": 64, "width": 64}, "state_dict": Autoencoder().state_dict()}, checkpoint)
        expected = "holds weights of another architecture"
    else:
        with open(checkpoint, "wb") as file:
            pickle.dump({"spec": {}, "state_dict": Payload()}, file)
        expected = "is not a featurelens checkpoint"
    result = run_module("jobs.extract", "--checkpoint", str(checkpoint), "--out", "features", "--limit", "8",
                        cwd=tmp_path, timeout=120)
    assert_one_clear_error(result, "extract", str(checkpoint), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no table, and no PWNED


# --- errors raised inside Ray come out as one clear line ---------------------------------------------


def failing_decode(tmp_path: Path):
    """A Ray Data decode of a file removed after the folder was listed: a DataError inside a Ray task."""
    import pyarrow as pa
    import ray.data

    gone = tmp_path / "s1" / "gone.pgm"
    manifest = pa.table({"id": [0], "label": [0], "label_name": ["s1"], "path": [str(gone)]})
    decode = folder_decode(DataConfig(dataset="images", data_dir=str(tmp_path)), 28, 28)
    dataset = ray.data.from_arrow(manifest).map_batches(decode_images, batch_format="pyarrow", fn_kwargs=dict(decode=decode))
    message = f"1 unreadable image(s) in {tmp_path}: {gone}: no such file. Fix or remove them, or pass " \
              f"--on-bad-image skip to leave them out (listed in the run directory's {SKIPPED_IMAGES_FILE})"
    return message, dataset


def last_line(captured: str) -> str:
    """The job's own line: Ray may log its notice of a failed task to stderr before it."""
    return captured.strip().splitlines()[-1]


def test_data_error_inside_a_ray_data_task_is_one_line_exit_2(tmp_path, ray_session, capsys):
    message, dataset = failing_decode(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_job("train", dataset.materialize)
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err) == f"featurelens train: error: {message}"


def test_data_error_raised_by_a_ray_task_is_one_line_exit_2(ray_session, capsys):
    @ray_session.remote
    def decode():
        raise DataError("/data/faces/s7/3.pgm: cannot decode: image file is truncated")

    with pytest.raises(SystemExit) as exit_:
        run_job("extract", lambda: ray_session.get(decode.remote()))
    assert exit_.value.code == 2
    assert last_line(capsys.readouterr().err) == (
        "featurelens extract: error: /data/faces/s7/3.pgm: cannot decode: image file is truncated")


def test_root_cause_unwraps_ray_train_worker_failures(tmp_path, ray_session):
    """A decode error in a Train worker's data shard reaches the driver as WorkerGroupError ->
    UserExceptionWithTraceback -> RayTaskError(UserCodeException), the DataError as text only."""
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    message, dataset = failing_decode(tmp_path)
    with pytest.raises(Exception) as raised:
        dataset.materialize()
    wrapped = WorkerGroupError("worker 0 failed", {0: UserExceptionWithTraceback(raised.value, "Traceback ...")})
    assert error_summary(wrapped) == ("DataError", message)
    assert root_cause(RuntimeError("stage train failed: see above")) == "stage train failed: see above"
    multi_line = DataError("2 unreadable image(s) in d:\n  d/a.png: empty file (0 bytes)\n  d/b.png: ...")
    assert root_cause(multi_line) == str(multi_line)  # our own messages are kept whole
