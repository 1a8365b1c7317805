"""The whole run: train -> extract -> stability -> recluster -> report, into one run directory
(its layout: ``pipelines.rundir``).

A stage whose complete output exists is skipped, so a rerun resumes where a failure stopped it;
``--from STAGE`` recomputes that stage and the ones after it, and an unfinished stage (more
epochs, say) is continued and every stage after it recomputed. A rerun whose config differs from
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
from pipelines.rundir import CONFIG_FILE, LOG_FILE, REPORT_HTML, STAGES, STAGES_FILE, stage_dir, stage_done
from pipelines.storage import write_json_atomic, write_text_atomic

# The config sections each stage reads, its own and those of the stages before it.
STAGE_SECTIONS = {
    "train": ("data", "train"),
    "extract": ("data", "train", "extract"),
    "stability": ("data", "train", "extract", "stability"),
    "recluster": ("data", "train", "extract", "stability", "recluster"),
    "report": ("data", "train", "extract", "stability", "recluster", "report"),
}


@dataclass
class PipelineConfig:
    """Every option of every stage; a TOML file has one [section] per field."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    recluster: ReclusterConfig = field(default_factory=ReclusterConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        # Checked here, at config time: found after training and the sweep, it would cost the run.
        if self.recluster.k not in self.stability.k_values:
            raise ValueError(f"--recluster-k {self.recluster.k} is not among the k of the sweep "
                             f"(--stability-k {self.stability.k}): add it there, or re-cluster one of those")

    def to_dict(self) -> dict[str, dict]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, values: dict[str, dict]) -> PipelineConfig:
        """From {section: {option: value}}; a bad value is named as its option (``--train-epochs``)."""
        from pipelines.cli import build_config

        unknown = set(values) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
        sections = {}
        for name, section_class in SECTIONS.items():
            given = values.get(name, {})
            known = {f.name for f in dataclasses.fields(section_class)}
            if set(given) - known:
                raise ValueError(f"[{name}] has unknown option(s) {sorted(set(given) - known)}; known: {sorted(known)}")
            sections[name] = build_config(section_class, given, "" if name == "data" else f"{name}-")
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


def run_train(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.train import train

    result = train(config.data, config.train, stage_dir(run_dir, "train"))
    last = result.history[-1]
    accuracy = f", test accuracy {last['test_accuracy']:.4f}" if last.get("test_accuracy") is not None else ""
    return f"{len(result.history)} epochs, test loss {last['test_loss']:.5f}{accuracy}"


def run_extract(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.extract import extract_features

    extract = dataclasses.replace(config.extract, checkpoint=str(stage_dir(run_dir, "train")), overwrite=True)
    rows = extract_features(config.data, extract, stage_dir(run_dir, "extract"))
    return f"{rows:,} feature rows ({config.extract.split} split)"


def run_stability_stage(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.stability import run_stability
    from pipelines.sweep_scores import load_sweep_data

    stability = config.stability
    if stability.heatmap_k is None and config.recluster.k in stability.k_values:
        stability = dataclasses.replace(stability, heatmap_k=config.recluster.k)
    features = load_sweep_data(stage_dir(run_dir, "extract"), stability.sample_size)
    return run_stability(features, stability, stage_dir(run_dir, "stability")).line()


def run_recluster_stage(run_dir: Path, config: PipelineConfig) -> str:
    from pipelines.recluster import run_recluster

    return run_recluster(stage_dir(run_dir, "stability"), config.recluster, stage_dir(run_dir, "recluster")).line()


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


# Option changes a finished stage takes in its stride: more epochs continue training; new k are
# added to the sweep (the k already computed are kept); new attributes only rewrite its findings.
RESUMABLE = {"train": {"train.epochs"},
             "stability": {"stability.k", "stability.heatmap_k", "stability.cpus_per_trial", "stability.attributes",
                           "stability.attribute_pattern"}}


def changed_options(run_dir: Path, config: PipelineConfig) -> dict[str, tuple]:
    """{"section.option": (saved value, new value)} against the config the run directory was made with."""
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.exists():
        return {}
    saved, current = PipelineConfig.from_dict(load_config_file(saved_file)).to_dict(), config.to_dict()
    return {f"{section}.{name}": (saved[section][name], value)
            for section, options in current.items() for name, value in options.items()
            if saved[section][name] != value and changes_output(section, name)}


def changes_output(section: str, name: str) -> bool:
    """Whether a change of this option makes a finished stage stale (``config.opt``'s flag: how
    long to wait for an autoscaler, or how many rows go in a file, never what is computed)."""
    option = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return option.metadata.get("changes_output", True)


def stages_to_run(run_dir: Path, config: PipelineConfig, from_stage: str | None, changed: dict) -> list[str]:
    """The stages this run computes: from ``from_stage`` on, else from the first stage that is
    unfinished or whose own options changed in a way it resumes from (more epochs, new k).
    A stage's output is its successors' input, so every stage after it runs too."""
    if from_stage is None:
        for stage in STAGES:
            resumes = set(changed) & RESUMABLE.get(stage, set())
            if resumes or not stage_done(run_dir, stage, config.train.epochs):
                from_stage = stage
                break
    return list(STAGES[STAGES.index(from_stage):]) if from_stage else []


def check_config_unchanged(run_dir: Path, changed: dict, kept: list[str], resumed: str | None) -> None:
    """Refuse to keep finished stages that were computed under other options: the ``kept``
    ones, and the ``resumed`` one beyond the changes it resumes from."""
    for stage in [*kept, *([resumed] if resumed else [])]:
        allowed = RESUMABLE.get(stage, set()) if stage == resumed else set()
        stale = [key for key in changed if key.split(".")[0] in STAGE_SECTIONS[stage] and key not in allowed]
        if stale and stage_dir(run_dir, stage).exists():
            details = "; ".join(f"--{option_name(key)}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in stale)
            raise ValueError(
                f"{run_dir}: stage {stage!r} ran with other options ({details}); rerun with "
                f"--from {stage} to recompute from there, or use another --run-dir"
            )


def option_name(key: str) -> str:
    """'train.epochs' -> 'train-epochs', 'data.data_dir' -> 'data-dir': the option as typed."""
    section, name = key.split(".")
    return (name if section == "data" else f"{section}_{name}").replace("_", "-")


def run_pipeline(config: PipelineConfig, run_dir: str | Path, from_stage: str | None = None) -> Path:
    """Run every stage that is not done yet (all from ``from_stage`` on); returns the report path."""
    from pipelines.runtime import init_ray

    if from_stage is not None and from_stage not in STAGES:
        raise ValueError(f"--from must be one of {', '.join(STAGES)}; got {from_stage!r}")
    run_dir = Path(run_dir).resolve()
    changed = changed_options(run_dir, config)
    pending = stages_to_run(run_dir, config, from_stage, changed)
    resumed = pending[0] if pending and from_stage is None else None
    check_config_unchanged(run_dir, changed, [stage for stage in STAGES if stage not in pending], resumed)
    report = stage_dir(run_dir, "report") / REPORT_HTML
    if not pending:
        print(f"[pipeline] every stage of {run_dir} is done; nothing to do (use --from STAGE to recompute)")
        return report
    for stage in pending:
        if stage != resumed:  # the resumed stage continues from what it has (epochs, finished k)
            shutil.rmtree(stage_dir(run_dir, stage), ignore_errors=True)
    write_text_atomic(run_dir / CONFIG_FILE, to_toml(config.to_dict()))
    times = json.loads((run_dir / STAGES_FILE).read_text()) if (run_dir / STAGES_FILE).exists() else {}
    kept = [stage for stage in STAGES if stage not in pending]
    print(f"[pipeline] {run_dir}: {' -> '.join(pending)}" + (f" ({', '.join(kept)} done before)" if kept else ""),
          flush=True)
    init_ray(log_file=run_dir / LOG_FILE)
    for stage in pending:
        started = time.perf_counter()
        summary = run_stage(stage, run_dir, config)
        seconds = time.perf_counter() - started
        times[stage] = {"seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "summary": summary}
        write_json_atomic(run_dir / STAGES_FILE, times)
        print(f"[pipeline] {stage} done in {seconds:.0f} s: {summary} -> {stage_dir(run_dir, stage)}", flush=True)
    return report


def run_stage(stage: str, run_dir: Path, config: PipelineConfig) -> str:
    """One stage; an input error keeps its kind (exit 2), any other failure says how to go on."""
    try:
        return STAGE_RUNNERS[stage](run_dir, config)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise type(error)(f"stage {stage}: {error}") from None
    except Exception as error:
        from pipelines.cli import root_cause

        raise StageError(
            f"stage {stage} failed: {root_cause(error)}. Finished stages are kept: fix the cause "
            f"and rerun the same command to resume from {stage}."
        ) from error
