"""Command-line conveniences applied before Hydra sees the arguments.

- A config-group choice that does not exist (`recipe=mobile_in8`) is reported in one line with
  the closest name, instead of Hydra's multi-line search-path dump.
- A top-level key that no config has (`seeds=3`) is reported in one line with the closest key,
  instead of Hydra's advice to add it with `+seeds=3` (the run settings forbid unknown keys).
- Stage parameters can be set without Hydra's `+` prefix (`stages.prune.frequency=10`) even when
  the recipe leaves them at their schema default: the recipe's schema, not the YAML file, defines
  which keys exist, and a mistyped key still fails validation with a suggestion. Keys the chosen
  recipe sets are passed on as typed, so a sweeper reports them by their plain names.
"""

from __future__ import annotations

from contextlib import suppress
from importlib.resources import files
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.plugin.schema import suggest

CHECKED_GROUPS = ("recipe", "data", "model", "device")
# Hydra plugins behind sweeper and launcher choices, with the extra that installs each.
PLUGINS = {
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "search"),
    "pareto": ("hydra_plugins.hydra_optuna_sweeper", "search"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def expand_arguments(argv: list[str]) -> list[str]:
    """Check group choices and return the arguments to hand to Hydra."""
    from pipeline.private_api import hydra_argument_parser

    try:
        args = hydra_argument_parser().parse_args(argv)
    except SystemExit:  # let Hydra report its own usage errors
        return argv
    if any(o.startswith("hydra.searchpath") for o in args.overrides):
        return argv  # recipes may come from anywhere: Hydra reports what it cannot find
    search = [Path(args.config_dir)] if args.config_dir else []
    check_top_level(args.overrides, search)
    for override in args.overrides:
        check_choice(override, search)
        for path in chosen_files(override, search):
            check_config_file(path)
    check_plugins(args.overrides, search)
    defined = frozenset() if args.config_name or args.config_path else recipe_keys(args.overrides, search)
    return [with_stage_prefix(a, defined) if a in args.overrides else a for a in argv]


def check_top_level(overrides: list[str], extra_dirs: list[Path]) -> None:
    """Raise PipelineError if an override sets a top-level key that is neither a run setting nor a config group.

    Only plain `key=value` overrides are checked: `+key=value` adds a key on purpose and goes to
    Hydra as typed, and nested keys (`stages.prune.x`) are checked by their schemas.
    """
    import re

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    from pipeline.config.settings import RunSettings

    known = sorted({*RunSettings.model_fields, "hydra", *groups(extra_dirs)})
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException:
            continue  # Hydra reports its own syntax errors
        top = re.split(r"[./]", override.key_or_group)[0]
        if override.type is OverrideType.CHANGE and top not in known:
            raise PipelineError(f"{top}: unknown key{suggest(top, known)}")


def groups(extra_dirs: list[Path]) -> set[str]:
    """Names of the config groups (folders) of the packaged recipes and of `extra_dirs`."""
    names = {entry.name for entry in files("recipes").iterdir() if entry.is_dir() and not entry.name.startswith("_")}
    return names | {p.name for folder in extra_dirs if folder.is_dir() for p in folder.iterdir() if p.is_dir()}


def check_choice(override: str, extra_dirs: list[Path]) -> None:
    """Raise PipelineError if `override` picks a missing option of a checked group."""
    key, _, value = override.partition("=")
    if key not in CHECKED_GROUPS or not value:
        return
    known = options(key, extra_dirs)
    for choice in value.split(","):
        if choice.strip() not in known:
            raise PipelineError(
                f"{key}={choice.strip()}: no such {key}{suggest(choice.strip(), sorted(known))}; "
                f"add your own as DIR/{key}/NAME.yaml and pass --config-dir DIR"
            )


def check_plugins(overrides: list[str], extra_dirs: list[Path]) -> None:
    """A sweeper or launcher whose Hydra plugin is missing: one line naming the extra to install.

    Choices come from the command line (`hydra/launcher=ray`) and from the chosen recipes'
    defaults (`override /hydra/sweeper: pareto`); Hydra alone would print a search-path dump.
    """
    import yaml

    chosen = [tuple(o.split("=", 1)) for o in overrides if o.startswith(("hydra/sweeper=", "hydra/launcher="))]
    recipes = [o.partition("=")[2] for o in overrides if o.startswith("recipe=")]
    for name in (recipes[-1].split(",") if recipes else []):
        with suppress(OSError, yaml.YAMLError, AttributeError):
            defaults = yaml.safe_load(read_option("recipe", name.strip(), extra_dirs)).get("defaults", [])
            chosen += [(k.split()[-1].strip("/"), v) for d in defaults if isinstance(d, dict) for k, v in d.items()]
    for group, option in chosen:
        module, extra = PLUGINS.get(option, (None, None))
        if group.startswith("hydra/") and module and not installed(module):
            raise PipelineError(
                f"{group}={option}: needs {module.split('.')[1].replace('_', '-')}; pip install -e \".[{extra}]\""
            )


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it.

    `importlib.util.find_spec` imports a dotted name's parents and raises when one is missing: with
    no Hydra plugin installed at all there is no `hydra_plugins` package to look in.
    """
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def chosen_files(override: str, extra_dirs: list[Path]) -> list[Path]:
    """The user's config files an override like `recipe=a,b` picks from `extra_dirs`."""
    key, _, value = override.partition("=")
    if key not in CHECKED_GROUPS:
        return []
    found = (folder / key / f"{choice.strip()}.yaml" for folder in extra_dirs for choice in value.split(","))
    return [path for path in found if path.is_file()]


def check_config_file(path: Path) -> None:
    """Raise PipelineError unless `path` is YAML holding a mapping, with `stages` (if any) a mapping too.

    Hydra would stop on such a file with a parser traceback or a message about merging types.
    """
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PipelineError(f"{path}: not valid YAML: {problem}{where}; fix the file") from None
    except (UnicodeDecodeError, OSError) as error:
        raise PipelineError(f"{path}: cannot read it as a UTF-8 text file ({error}); fix the file") from None
    if content is not None and not isinstance(content, dict):
        raise PipelineError(f"{path}: expected a mapping of keys to values, got a {type(content).__name__}; see recipes/recipe/*.yaml")
    stages = (content or {}).get("stages")
    if stages is not None and not isinstance(stages, dict):
        raise PipelineError(
            f"{path}: stages must map each stage name to its parameters, got a {type(stages).__name__}; "
            "write e.g. `stages: {train: {epochs: 5}, quantize: {mode: int8}}`"
        )


def options(group: str, extra_dirs: list[Path]) -> set[str]:
    """Names of the YAML files in `group` of the packaged recipes and of `extra_dirs`."""
    packaged = files("recipes") / group
    names = {entry.name for entry in packaged.iterdir()} if packaged.is_dir() else set()
    for folder in extra_dirs:
        names |= {p.name for p in (folder / group).glob("*.yaml")}
    return {name.removesuffix(".yaml") for name in names if name.endswith(".yaml")}


def with_stage_prefix(override: str, defined: frozenset[str] = frozenset()) -> str:
    """`stages.x.y=v` -> `++stages.x.y=v` (set whether or not the recipe mentions the key).

    `device.x=v`, `data.x=v` and `model.x=v` likewise, so that a mistyped key reaches the
    schema's did-you-mean check and parameters a config file leaves out can still be set.
    Keys in `defined` (set by the chosen recipe) need no prefix and keep their plain name.
    """
    key = override.partition("=")[0]
    if override.startswith(("stages.", "device.", "data.", "model.")) and "=" in override and key not in defined:
        return f"++{override}"
    return override


def recipe_keys(overrides: list[str], extra_dirs: list[Path]) -> frozenset[str]:
    """Dotted keys (`stages.prune.final_sparsity`) that every chosen recipe file sets."""
    import yaml

    chosen = [o.partition("=")[2] for o in overrides if o.startswith("recipe=")]
    names = chosen[-1].split(",") if chosen else [default_choice("recipe")]
    keys: set[str] | None = None
    for name in names:
        found = set(dotted(yaml.safe_load(read_option("recipe", name.strip(), extra_dirs)) or {}))
        keys = found if keys is None else keys & found
    return frozenset(keys or ())


def default_choice(group: str) -> str:
    """The option of `group` that the packaged config.yaml picks."""
    import yaml

    defaults = yaml.safe_load((files("recipes") / "config.yaml").read_text())["defaults"]
    return next(entry[group] for entry in defaults if isinstance(entry, dict) and group in entry)


def read_option(group: str, name: str, extra_dirs: list[Path]) -> str:
    """The text of option `name` of `group`: a --config-dir's file first, as Hydra searches."""
    for folder in extra_dirs:
        if (folder / group / f"{name}.yaml").is_file():
            return (folder / group / f"{name}.yaml").read_text()
    return (files("recipes") / group / f"{name}.yaml").read_text()


def dotted(tree: Any, prefix: str = "") -> list[str]:
    """Every key path of a nested mapping, inner nodes included: `{"a": {"b": 1}}` -> ["a", "a.b"]."""
    if not isinstance(tree, dict):
        return []
    paths = []
    for key, value in tree.items():
        paths += [f"{prefix}{key}", *dotted(value, f"{prefix}{key}.")]
    return paths
