"""`python -m pipeline.describe [NAME ...]`: every plugin's parameters, from its schema.

Stages, data sources and models declare their parameters once, as typed schemas; this prints
them (type, default, description), so the documentation cannot drift from what is validated.
"""

from __future__ import annotations

import sys

from pipeline.plugin import registry
from pipeline.plugin.schema import describe_schema


def parameters_text(group: str, name: str) -> str:
    """A plugin's docstring line and a table of its parameters."""
    plugin = registry.load(group, name, name)
    summary = (plugin.__doc__ or "").strip().splitlines()[0] if plugin.__doc__ else ""
    rows = [row for row in describe_schema(plugin.Config) if row[0] != "name"]
    widths = [max((len(r[i]) for r in rows), default=4) for i in range(3)]
    lines = [f"{registry.KINDS[group]} {name}: {summary}"]
    lines += [
        f"  {field:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {text}"
        for field, kind, default, text in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Describe the named plugins, or all of them."""
    wanted = set(sys.argv[1:] if argv is None else argv)
    for group in (registry.STAGES, registry.DATA, registry.MODELS):
        for name in sorted(registry.available(group)):
            if not wanted or name in wanted:
                print(parameters_text(group, name) + "\n")


if __name__ == "__main__":
    main()
