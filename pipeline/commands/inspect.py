"""`python -m pipeline.inspect recipe=NAME [key=value ...]`: the layer plan of a recipe, without training.

Takes the same overrides as `python -m pipeline` and checks them the same way; then loads the data
(for the input shape and classes), builds the model once and prints what every stage will do to
each layer: the table a run prints at its start and stores as `layer_plan.md`. `--json` prints
it as JSON instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError, report

if TYPE_CHECKING:
    from pipeline.run.layer_plan import LayerPlan

def compose(overrides: list[str], config_dir: str | None) -> Any:
    """The config `python -m pipeline` would compose from `overrides` (and recipes in `config_dir`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException

    if config_dir:
        overrides = [*overrides, f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]
    try:
        with initialize_config_module(config_module="recipes", version_base="1.3"):
            return hydra_compose("config", overrides=overrides)
    except HydraException as error:
        raise PipelineError(" ".join(str(error).split())) from None


def main(argv: list[str] | None = None) -> None:
    """Print the layer plan for the overrides in `argv` (default: the command line)."""
    import argparse

    from pipeline.config.arguments import expand_arguments
    from pipeline.run import quiet

    quiet.install()  # the libraries' start-up notes stay off the terminal, as for runs

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.inspect",
        description="What each stage of a recipe will do to each layer of the model, without training.",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--config-dir", "-cd", help="a folder of your own recipes (DIR/recipe/NAME.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, as for python -m pipeline (recipe=NAME, model=...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    extra = ["--config-dir", args.config_dir] if args.config_dir else []
    try:
        overrides = expand_arguments([*extra, *args.overrides])[len(extra) :]
        plan = layer_plan(compose(overrides, args.config_dir))
    except PipelineError as error:
        report(error)
    print(plan.dumps() if args.json else plan.table())


def layer_plan(cfg: Any) -> LayerPlan:
    """Check the config as a run would, then plan its layers."""
    from pipeline.config.recipe import check_recipe
    from pipeline.run.preflight import check_environment
    from pipeline.run.runner import load_data, planned_layers

    plan = check_recipe(cfg)
    check_environment(plan.settings)
    return planned_layers(plan, load_data(plan))


if __name__ == "__main__":
    main()
