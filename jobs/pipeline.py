"""Run the whole pipeline: train -> extract -> stability -> recluster -> report.

    python -m jobs.pipeline --run-dir runs/fmnist [--config configs/fashion-mnist.toml] [overrides]
    python -m jobs.pipeline --run-dir runs/fmnist-n2d --preset fashion-mnist-n2d
    python -m jobs.pipeline --run-dir runs/faces --dataset images \\
        --data-dir ../shared/data/faces/att_faces --image-size 112x92

Options come from the defaults, then the --config file (TOML, one [section] per stage), then
the command line: data options as they are (--dataset), the others with their section's name
(--train-epochs, --stability-k, --recluster-k-re). A rerun skips finished stages; --from STAGE
recomputes from STAGE on. Connects to $RAY_ADDRESS when set (as under `ray job submit`).
"""

import argparse

from pipelines.cli import add_config_arguments, run_job
from pipelines.pipeline import SECTIONS, STAGES, PipelineConfig, load_config_file, merge, preset_path, presets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the run directory (on shared storage for a multi-node cluster)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="TOML config file; the command line overrides single values")
    source.add_argument("--preset", help=f"a named config shipped in configs/: {', '.join(presets())}")
    parser.add_argument("--from", dest="from_stage", choices=STAGES, help="recompute from this stage on")
    for section, config_class in SECTIONS.items():
        add_config_arguments(parser, config_class, prefix="" if section == "data" else f"{section}-", overrides_only=True)
    args = vars(parser.parse_args(argv))

    def job() -> None:
        from pipelines.pipeline import run_pipeline

        config_file = preset_path(args["preset"]) if args["preset"] else args["config"]
        file_values = load_config_file(config_file) if config_file else {}
        overrides: dict[str, dict] = {}
        for section, config_class in SECTIONS.items():
            prefix = "" if section == "data" else f"{section}_"
            for name in (f.name for f in config_class.__dataclass_fields__.values()):
                if prefix + name in args:
                    overrides.setdefault(section, {})[name] = args[prefix + name]
        config = PipelineConfig.from_dict(merge(file_values, overrides))
        report = run_pipeline(config, args["run_dir"], args["from_stage"])
        print(f"[pipeline] report: {report}")

    run_job("pipeline", job)


if __name__ == "__main__":
    main()
