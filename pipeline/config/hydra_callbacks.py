"""Hydra callbacks that check recipes before Hydra creates any run directory.

Hydra makes the job's output directory before the task function starts, so a check inside the
task would leave an empty run behind. `on_run_start` and `on_multirun_start` run before that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config.objectives import check_directions
from pipeline.config.recipe import CheckedRecipe, check_recipe
from pipeline.errors import PipelineError, report
from pipeline.run.preflight import check_environment


class ValidateBeforeRun(Callback):
    """Check the recipe (every sweep value too) before any job starts."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_environment(check_recipe(config).settings)
        except PipelineError as error:
            report(error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            for variant in sweep_variants(config):
                check_recipe(variant)
            plan = check_recipe(config)
            check_search(plan, config.hydra.sweeper)
            check_environment(plan.settings)
        except PipelineError as error:
            report(error)


def check_search(plan: CheckedRecipe, sweeper: DictConfig) -> None:
    """A search must be able to measure its objectives and must move each the right way."""
    names = plan.settings.objectives
    if any(name.startswith("val_") for name in names) and getattr(plan.data_source.config, "val_fraction", None) == 0:
        raise PipelineError(
            f"data.val_fraction: 0 leaves no validation split, but objectives name {', '.join(names)}; "
            "set data.val_fraction=0.1 (the test split never steers a search)"
        )
    if "direction" in sweeper:  # Optuna's sweeper; the basic sweeper optimises nothing
        check_directions(sweeper.direction, names, task=plan.settings.task)


def sweep_variants(config: DictConfig) -> Iterator[DictConfig]:
    """The base config, then one copy per value of each swept (non-group) key.

    Values are checked one key at a time rather than as a full cartesian product: parameter
    checks are per key, and this stays fast for large sweeps. Group sweeps (`recipe=a,b`) are
    checked when each job composes its config.
    """
    yield config
    groups = set(config.hydra.runtime.choices.keys())
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    for override in parsed:
        key = override.key_or_group
        if not override.is_sweep_override() or key in groups:
            continue
        try:
            values = list(override.sweep_iterator())
        except Exception:  # noqa: BLE001 - interval() and other sweeps only a sweeper can expand, each its own way
            continue
        for value in values:
            variant = config.copy()
            OmegaConf.set_struct(variant, False)
            OmegaConf.update(variant, key, value, merge=True)
            yield variant
