"""The whole run: train -> extract -> stability -> recluster -> report, into one run directory.

Run directory::

    RUN/config.toml     the resolved config (every option, defaults included)
    RUN/stages.json     per stage: wall time, finish time, one-line summary
    RUN/train/  RUN/features/  RUN/stability/  RUN/recluster/  RUN/report/

A stage whose complete output exists is skipped, so a rerun resumes where a failure stopped it;
``--from STAGE`` recomputes that stage and the ones after it. A rerun whose config differs from
the saved one in an option that a finished stage used is refused, naming the option.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import (
    DataConfig,
    ExtractConfig,
    ReclusterConfig,
    ReportConfig,
    StabilityConfig,
    TrainConfig,
)
from pipelines.storage import write_json_atomic, write_text_atomic

STAGES = ("train", "extract", "stability", "recluster", "report")
# The config sections each stage reads, its own and those of the stages before it.
STAGE_SECTIONS = {
    "train": ("data", "train"),
    "extract": ("data", "train", "extract"),
    "stability": ("data", "train", "extract", "stability"),
    "recluster": ("data", "train", "extract", "stability", "recluster"),
    "report": ("data", "train", "extract", "stability", "recluster", "report"),
}
STAGE_DIRS = {"train": "train", "extract": "features", "stability": "stability", "recluster": "recluster", "report": "report"}
CONFIG_FILE, STAGES_FILE = "config.toml", "stages.json"


@dataclass
class PipelineConfig:
    """Every option of every stage; a TOML file has one [section] per field."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    recluster: ReclusterConfig = field(default_factory=ReclusterConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict[str, dict]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, values: dict[str, dict]) -> PipelineConfig:
        unknown = set(values) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
        sections = {}
        for name, section_class in SECTIONS.items():
            given = values.get(name, {})
            known = {f.name for f in dataclasses.fields(section_class)}
            if set(given) - known:
                raise ValueError(f"[{name}] has unknown option(s) {sorted(set(given) - known)}; known: {sorted(known)}")
            sections[name] = section_class(**given)
        return cls(**sections)


SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "extract": ExtractConfig,
    "stability": StabilityConfig,
    "recluster": ReclusterConfig,
    "report": ReportConfig,
}


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped with the code (and --working-dir)


def presets() -> list[str]:
    """The named presets: the config files in configs/ (``--preset fashion-mnist``)."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    if name not in presets():
        raise ValueError(f"unknown preset {name!r}; the presets are {', '.join(presets())} (files in {PRESETS_DIR})")
    return PRESETS_DIR / f"{name}.toml"


def load_config_file(path: str | Path) -> dict[str, dict]:
    """A TOML config file as {section: {option: value}}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {path}: {error}") from None


def to_toml(values: dict[str, dict]) -> str:
    """Sections of scalars as TOML; unset options (None) are written as comments, since TOML has no null."""
    lines = []
    for section, options in values.items():
        lines.append(f"[{section}]")
        for name, value in options.items():
            lines.append(f"# {name} = (unset)" if value is None else f"{name} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def merge(base: dict[str, dict], overrides: dict[str, dict]) -> dict[str, dict]:
    merged = {section: dict(options) for section, options in base.items()}
    for section, options in overrides.items():
        merged.setdefault(section, {}).update(options)
    return merged


# --- stages --------------------------------------------------------------------------------------


def stage_done(run_dir: Path, stage: str, config: PipelineConfig) -> bool:
    """Whether a stage's complete output is there (each stage writes it atomically, last)."""
    out = run_dir / STAGE_DIRS[stage]
    if stage == "train":
        from pipelines.training import read_metrics

        history = read_metrics(out)
        return (out / "model.pt").exists() and bool(history) and history[-1]["epoch"] >= config.train.epochs
    marker = {"extract": ".", "stability": "summary.csv", "recluster": "groups.json", "report": "report.html"}[stage]
    return (out / marker).exists()


def run_train(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.training import train

    result = train(config.data, config.train, run_dir / "train")
    last = result.history[-1]
    accuracy = f", test accuracy {last['test_accuracy']:.4f}" if last.get("test_accuracy") is not None else ""
    return f"{len(result.history)} epochs, test loss {last['test_loss']:.5f}{accuracy}"


def run_extract(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.features import extract_features, read_features

    extract = dataclasses.replace(config.extract, checkpoint=str(run_dir / "train"), overwrite=True)
    path = extract_features(config.data, extract, run_dir / "features")
    table = read_features(path)
    return f"{len(table.ids):,} feature rows ({config.extract.split} split) in {path}"


def run_stability_stage(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.clustering import load_sweep_data, run_stability

    return run_stability(load_sweep_data(run_dir / "features"), config.stability, run_dir / "stability").line()


def run_recluster_stage(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.regroup import run_regroup

    return run_regroup(run_dir / "stability", run_dir / "features", config.recluster, run_dir / "recluster").line()


def run_report_stage(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.report import build_report

    path = build_report(run_dir, config)
    return f"report at {path}"


STAGE_RUNNERS: dict[str, Callable[[Path, PipelineConfig], str]] = {
    "train": run_train,
    "extract": run_extract,
    "stability": run_stability_stage,
    "recluster": run_recluster_stage,
    "report": run_report_stage,
}


# --- the driver ----------------------------------------------------------------------------------


class StageError(RuntimeError):
    """A stage failed; the message names it and says how to go on."""


def check_config_unchanged(run_dir: Path, config: PipelineConfig, from_stage: str | None) -> None:
    """Refuse to keep finished stages that were computed under other options than ``config``.

    Stages from ``from_stage`` on are recomputed anyway; a finished stage before it (or any, when
    there is no ``from_stage``) whose options changed would be stale."""
    saved_file = run_dir / "config.json"
    if not saved_file.exists():
        return
    saved, current = json.loads(saved_file.read_text()), config.to_dict()
    changed = {
        f"{section}.{name}": (saved.get(section, {}).get(name), value)
        for section, options in current.items()
        for name, value in options.items()
        if saved.get(section, {}).get(name) != value
    }
    recomputed = STAGES[STAGES.index(from_stage):] if from_stage else ()
    for stage in STAGES:
        stale = [key for key in changed if key.split(".")[0] in STAGE_SECTIONS[stage]]
        if stale and stage not in recomputed and stage_done(run_dir, stage, config):
            details = "; ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in stale)
            raise ValueError(
                f"{run_dir}: stage {stage!r} ran with other options ({details}); rerun with "
                f"--from {stage} to recompute from there, or use another --run-dir"
            )


def run_pipeline(config: PipelineConfig, run_dir: str | Path, from_stage: str | None = None) -> Path:
    """Run every stage that is not done yet (all from ``from_stage`` on); returns the report path."""
    from pipelines.runtime import init_ray

    if from_stage is not None and from_stage not in STAGES:
        raise ValueError(f"--from must be one of {', '.join(STAGES)}; got {from_stage!r}")
    run_dir = Path(run_dir).resolve()
    check_config_unchanged(run_dir, config, from_stage)
    if from_stage is not None:
        for stage in STAGES[STAGES.index(from_stage):]:
            shutil.rmtree(run_dir / STAGE_DIRS[stage], ignore_errors=True)
    pending = [stage for stage in STAGES if not stage_done(run_dir, stage, config)]
    if not pending:
        print(f"[pipeline] every stage of {run_dir} is done; nothing to do (use --from STAGE to recompute)")
        return run_dir / "report" / "report.html"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, to_toml(config.to_dict()))
    write_json_atomic(run_dir / "config.json", config.to_dict())
    times = json.loads((run_dir / STAGES_FILE).read_text()) if (run_dir / STAGES_FILE).exists() else {}
    init_ray()
    for stage in STAGES:
        if stage not in pending:
            print(f"[pipeline] {stage}: done before, skipped")
            continue
        print(f"[pipeline] {stage}: running", flush=True)
        started = time.perf_counter()
        try:
            summary = STAGE_RUNNERS[stage](run_dir, config)
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            raise type(error)(f"stage {stage}: {error}") from None
        except Exception as error:
            from pipelines.cli import root_cause

            raise StageError(
                f"stage {stage} failed: {root_cause(error)}. Finished stages are kept: fix the cause "
                f"and rerun the same command to resume from {stage}."
            ) from error
        seconds = time.perf_counter() - started
        times[stage] = {"seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "summary": summary}
        write_json_atomic(run_dir / STAGES_FILE, times)
        print(f"[pipeline] {stage}: {summary} ({seconds:.0f} s)", flush=True)
    return run_dir / "report" / "report.html"
