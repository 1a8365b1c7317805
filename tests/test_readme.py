"""The README's commands, as written: so that the README cannot drift from the code.

The fast test (in `make test`) parses every `python -m jobs....` command of the README (the
command blocks and the inline ones) with the job's own parser and builds its configs, from a
folder laid out like a clone (configs/ beside it, ../shared above it) that is not the repository.
The full test runs every command block's jobs, in order, with small sizes appended, from such a
folder; it takes several minutes: `make test-readme` (pytest -m readme)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# Small sizes for the full run: appended, so they override what the README says.
SMALL = {
    "train": ["--limit", "256", "--epochs", "1", "--workers", "1"],
    "extract": ["--limit", "256"],
    "stability": ["--seeds", "2", "--resamples", "2"],
    "recluster": [],
    "shards": ["--limit", "160"],  # k = 40 of the parquet run needs 40 distinct points in a bootstrap
    "pipeline": ["--limit", "128", "--train-epochs", "1", "--train-workers", "1", "--stability-seeds", "2",
                 "--stability-resamples", "2"],
}


# `make run`'s command, from the Makefile: the later `--from stability` example resumes its run.
MAKE_RUN = re.search(r"^run:.*\n\t\$\(PY\) (.+)$", (REPO / "Makefile").read_text(), flags=re.M)[1]
MAKE_RUN = "python " + MAKE_RUN


def block_commands(text: str) -> list[str]:
    """The commands of the ```sh blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def job_commands(text: str) -> list[list[str]]:
    """Every ``python -m jobs.NAME ...`` of the README, blocks and inline code, as argv."""
    inline = [" ".join(span.split()) for span in re.findall(r"`(python -m jobs\.[^`]+)`", text)]
    found = [c for c in block_commands(text) if c.startswith("python -m jobs.")] + inline
    return [shlex.split(command) for command in found if len(command.split()) > 3]  # not a bare job name


@pytest.fixture
def clone(tmp_path, monkeypatch) -> Path:
    """A folder laid out like a clone of the repository (configs/, ../shared), the cwd."""
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "configs").symlink_to(REPO / "configs")
    if (REPO.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    monkeypatch.chdir(tmp_path / "clone")
    return tmp_path / "clone"


def test_the_readme_has_its_commands():
    jobs = {argv[2] for argv in job_commands(README)}
    assert {"jobs.train", "jobs.extract", "jobs.stability", "jobs.recluster", "jobs.shards", "jobs.pipeline"} <= jobs
    assert "make run" in block_commands(README) and "make test" in block_commands(README)


@pytest.mark.parametrize("argv", job_commands(README), ids=lambda argv: " ".join(argv[2:5]))
def test_every_readme_command_parses_and_makes_its_configs(argv, clone, monkeypatch):
    import importlib

    from pipelines import cli

    module = importlib.import_module(argv[2])
    parsed = {}

    def parse_only(name, job):  # what the job would check first; Ray is never started
        parsed["name"] = name

    monkeypatch.setattr(module, "run_job", parse_only)
    original = cli.JobParser.parse_args
    monkeypatch.setattr(cli.JobParser, "parse_args", lambda self, args=None, ns=None: parsed.setdefault(
        "args", original(self, args, ns)))
    module.main(argv[3:])
    assert parsed["name"] == argv[2].split(".")[1]
    build_configs(argv[2], parsed["args"])


def build_configs(job: str, args) -> None:
    from pipelines import config
    from pipelines.cli import config_from_arguments

    if job == "jobs.pipeline":
        from jobs.pipeline import pipeline_config

        pipeline_config(vars(args))
        return
    for config_class in (config.DataConfig, config.TrainConfig, config.ExtractConfig, config.StabilityConfig,
                         config.ReclusterConfig):
        if all(hasattr(args, f) for f in config_class.__dataclass_fields__):
            config_from_arguments(args, config_class)


@pytest.mark.readme
def test_every_readme_command_block_runs_from_a_clone_like_folder(clone):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    for command in block_commands(README):
        argv = shlex.split(MAKE_RUN if command == "make run" else command)
        if argv[:2] != ["python", "-m"] or not argv[2].startswith("jobs."):
            continue  # make, ray up ...: not runnable here
        job = argv[2].split(".")[1]
        result = subprocess.run([sys.executable, *argv[1:], *SMALL[job]], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=1200)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
