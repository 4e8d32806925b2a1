"""`python -m pipeline.describe [NAME ...]`: every plugin's parameters, from its schema.

Stages, data sources and models declare their parameters once, as typed schemas; this prints
them (type, default, description), so the documentation cannot drift from what is validated.
"""

from __future__ import annotations

import sys

from pipeline.plugin import registry
from pipeline.plugin.schema import Plugin, describe_schema


def parameters_text(group: str, name: str) -> str:
    """A plugin's docstring line and a table of its parameters."""
    plugin = registry.load(group, name, name)
    rows = parameters(group, plugin)
    widths = [max((len(r[i]) for r in rows), default=4) for i in range(3)]
    lines = [f"{registry.KINDS[group]} {name}: {summary(plugin)}"]
    lines += [
        f"  {field:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {text}"
        for field, kind, default, text in rows
    ]
    return "\n".join(lines)


def summary(documented: object) -> str:
    """The first line of a plugin's (or schema's) docstring, or '' without one."""
    doc = (documented.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def parameters(group: str, plugin: type[Plugin]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of the parameters a recipe sets for `plugin` of `group`.

    A data source's or model's `name` field is the config group's choice (`data=csv`), not a
    parameter; a stage's fields are all parameters (export's `name` is the files' base name).
    """
    own_name = "name" if group in (registry.DATA, registry.MODELS) else None
    return [row for row in describe_schema(plugin.Config) if row[0] != own_name]


def main(argv: list[str] | None = None) -> None:
    """Describe the named plugins, or all of them."""
    wanted = set(sys.argv[1:] if argv is None else argv)
    for group in (registry.STAGES, registry.DATA, registry.MODELS):
        for name in sorted(registry.available(group)):
            if not wanted or name in wanted:
                print(parameters_text(group, name) + "\n")


if __name__ == "__main__":
    main()
