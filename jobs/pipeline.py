"""Run the whole pipeline: train -> extract -> stability -> recluster -> report.

    python -m jobs.pipeline --out runs/fashion-mnist --config configs/fashion-mnist.toml [overrides]
    python -m jobs.pipeline --out runs/fmnist-n2d --preset fashion-mnist-n2d
    python -m jobs.pipeline --out runs/faces --preset orl-faces --data-dir ../shared/data/faces/att_faces

Options come from the defaults, then the --config file (TOML, one [section] per stage), then
the command line: data options as they are (--dataset), the others with their section's name
(--train-epochs, --stability-k, --recluster-k-re). A rerun skips finished stages, continues
training when --train-epochs grew and computes only the new k of --stability-k; --from STAGE
recomputes from STAGE on. Connects to $RAY_ADDRESS when set (as under `ray job submit`).
"""

import dataclasses

from pipelines.cli import (add_config_arguments, add_output_argument, input_path, input_paths, job_parser,
                           output_path, resolved_data, run_job)
from pipelines.pipeline import SECTIONS, STAGES, PipelineConfig, load_config_file, merge, preset_path, presets


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("pipeline", __doc__)
    add_output_argument(parser, "the run directory (on storage every node sees, for a multi-node cluster)",
                        "--run-dir")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="TOML config file; the command line overrides single values")
    source.add_argument("--preset", metavar="NAME", help=f"a named config shipped in configs/: {', '.join(presets())}")
    parser.add_argument("--from", dest="from_stage", choices=STAGES, help="recompute from this stage on")
    for section, config_class in SECTIONS.items():
        add_config_arguments(parser, config_class, prefix="" if section == "data" else f"{section}-",
                             overrides_only=True, skip=("checkpoint", "overwrite") if section == "extract" else ())
    args = vars(parser.parse_args(argv))

    def job() -> None:
        from pipelines.data import check_source

        config = resolved_paths(pipeline_config(args))
        run_dir = output_path(args["out"], "--out")
        check_source(config.data)  # before Ray starts and before the run directory is made
        from pipelines.pipeline import run_pipeline

        report = run_pipeline(config, run_dir, args["from_stage"])
        print(f"[pipeline] report: {report}")

    run_job("pipeline", job)


def pipeline_config(args: dict) -> PipelineConfig:
    """The defaults, then the config file, then the options given on the command line."""
    config_file = preset_path(args["preset"]) if args["preset"] else input_path(args["config"], "--config")
    file_values = load_config_file(config_file) if config_file else {}
    overrides: dict[str, dict] = {}
    for section, config_class in SECTIONS.items():
        prefix = "" if section == "data" else f"{section}_"
        for name in (f.name for f in dataclasses.fields(config_class)):
            if prefix + name in args:
                overrides.setdefault(section, {})[name] = args[prefix + name]
    return PipelineConfig.from_dict(merge(file_values, overrides))


def resolved_paths(config: PipelineConfig) -> PipelineConfig:
    """Every input path of the config made absolute (and checked), once, here."""
    train = dataclasses.replace(config.train, init_from=input_path(config.train.init_from, "--train-init-from"))
    stability = dataclasses.replace(
        config.stability, compare_runs=input_paths(config.stability.compare_runs, "--stability-compare-runs"))
    return dataclasses.replace(config, data=resolved_data(config.data), train=train, stability=stability)


if __name__ == "__main__":
    main()
