"""`python -m pipeline recipe=NAME [key=value ...]`: run a recipe (add -m to sweep)."""

from __future__ import annotations

import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.config.objectives import register_resolver
from pipeline.errors import PipelineError, report

register_resolver()  # before Hydra composes: the sweeper preset's direction follows `objectives`


@hydra.main(version_base="1.3", config_path="pkg://recipes", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    """Run one recipe; returns its `objectives` (final-stage metrics), what Hydra sweepers optimise."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline.config.objectives import values
    from pipeline.run.runner import RunInfo, run

    hydra_cfg = HydraConfig.get()
    info = RunInfo(
        run_dir=Path(hydra_cfg.runtime.output_dir),
        recipe=hydra_cfg.runtime.choices.get("recipe") or "custom",
        overrides=model_overrides(hydra_cfg.overrides.task),
        sweep=Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None,
    )
    try:
        result = run(cfg, info)
    except PipelineError as error:
        if not failures_tolerated(hydra_cfg):
            report(error)
        print(f"error: {error}", file=sys.stderr)
        raise  # the sweeper records a failed trial and goes on with the search
    return values(result.rows[-1].metrics, list(cfg.objectives), str(cfg.get("task", "classification")))


def failures_tolerated(hydra_cfg: Any) -> bool:
    """Whether the sweeper goes on after a failed job (Optuna's `max_failure_rate` above 0)."""
    return float(hydra_cfg.sweeper.get("max_failure_rate") or 0) > 0


def model_overrides(overrides: list[str]) -> tuple[str, ...]:
    """The overrides that shape the model (what a run name should show): no recipe, paths or servers."""
    shaping = ("stages.", "data", "model", "seed")
    cleaned = (o.lstrip("+") for o in overrides)
    return tuple(o for o in cleaned if o.startswith(shaping))


def cli() -> None:
    """Entry point: check what Hydra would report verbosely, then hand over to Hydra."""
    from pipeline.config.arguments import expand_arguments
    from pipeline.run import interrupts, quiet

    quiet.install()
    interrupts.install()
    try:
        sys.argv[1:] = expand_arguments(sys.argv[1:])
    except PipelineError as error:
        report(error)
    try:
        main()
    except KeyboardInterrupt:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        print("interrupted: the MLflow run is marked KILLED; stages that finished stay in the cache", file=sys.stderr)
        sys.exit(130)  # the shell's code for SIGINT


if __name__ == "__main__":
    cli()
