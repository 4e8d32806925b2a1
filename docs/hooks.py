"""MkDocs hooks: the reference pages' parameter tables come from the schemas at build time.

A page asks for a table with a marker line, `<!-- parameters: stage prune -->` (kinds: stage, data,
model, settings). The hook replaces it with the plugin's docstring line and a table made by the
same function as `python -m pipeline.describe`, so the site cannot drift from what is validated.
After the pages are read, every installed stage, data source and model must have had its table:
a plugin added without documentation fails `mkdocs build --strict`.

`<!-- readme-section: HEADING -->` shows the body of the README's section under that heading, so
an example kept in the README (the plugin example) is not copied. BENCHMARKS.md
(and the plots it shows) is published as the site's benchmarks page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

from pipeline.commands.describe import parameters, summary
from pipeline.config.settings import BudgetParams, MeasureParams, RunSettings, TrackingParams
from pipeline.device.params import DeviceParams
from pipeline.plugin import registry
from pipeline.plugin.schema import Params, describe_schema

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- parameters: (\w+) (\w+) -->$", flags=re.M)
README_SECTION = re.compile(r"^<!-- readme-section: (.+?) -->$", flags=re.M)
GROUPS = {"stage": registry.STAGES, "data": registry.DATA, "model": registry.MODELS}
# The run-level keys: the top of a composed config, and the mappings under it.
SETTINGS: dict[str, type[Params]] = {
    "run": RunSettings,
    "measure": MeasureParams,
    "tracking": TrackingParams,
    "budget": BudgetParams,
    "device": DeviceParams,
}
BENCHMARKS = "BENCHMARKS.md"

rendered: set[tuple[str, str]] = set()


def on_pre_build(config: Any) -> None:
    """Start each build (and each `mkdocs serve` rebuild) with no tables rendered."""
    rendered.clear()


def on_files(files: Files, config: Any) -> Files:
    """Add BENCHMARKS.md as `benchmarks.md`, with the images it links to at the same paths."""
    text = (ROOT / BENCHMARKS).read_text()
    files.append(File.generated(config, "benchmarks.md", content=text))
    for image in sorted(set(re.findall(r"\]\((benchmarks/[^)]+\.png)\)", text))):
        files.append(File.generated(config, image, abs_src_path=str(ROOT / image)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace every parameters marker on the page with its table, every README marker with its section."""
    markdown = README_SECTION.sub(lambda match: readme_section(match[1], page.file.src_uri), markdown)
    return MARKER.sub(lambda match: section(match[1], match[2], page.file.src_uri), markdown)


def on_env(env: Any, config: Any, files: Files) -> Any:
    """Fail the build when an installed plugin has no reference table (pages are read by now)."""
    missing = [
        f"{kind} {name}"
        for kind, group in GROUPS.items()
        for name in sorted(registry.available(group))
        if (kind, name) not in rendered
    ]
    if missing:
        raise PluginError(f"docs/reference: no parameters table for {', '.join(missing)}; add `<!-- parameters: KIND NAME -->`")
    return env


def readme_section(heading: str, where: str) -> str:
    """The README's text under `heading` (any level), up to the next heading of that level or higher."""
    lines = (ROOT / "README.md").read_text().splitlines()
    headings = list(headings_of(lines))
    found = [(number, level) for number, level, title in headings if title == heading]
    if not found:
        raise PluginError(f"{where}: README.md has no section '{heading}'")
    start, level = found[0]
    end = next((number for number, other, _ in headings if number > start and other <= level), len(lines))
    return "\n".join(lines[start + 1:end]).strip("\n")


def headings_of(lines: list[str]) -> Iterator[tuple[int, int, str]]:
    """(line number, level, title) of each Markdown heading, skipping fenced code (`# a comment`)."""
    fenced = False
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) (.+)", line)):
            yield number, len(match[1]), match[2].strip()


def section(kind: str, name: str, where: str) -> str:
    """The docstring line and parameters table for one marker."""
    if kind == "settings":
        if name not in SETTINGS:
            raise PluginError(f"{where}: no settings schema '{name}' (valid: {', '.join(SETTINGS)})")
        return table(SETTINGS[name], describe_schema(SETTINGS[name]))
    if kind not in GROUPS:
        raise PluginError(f"{where}: unknown kind '{kind}' in a parameters marker (valid: settings, {', '.join(GROUPS)})")
    plugin = registry.load(GROUPS[kind], name, where)
    rendered.add((kind, name))
    return "\n\n".join(part for part in (summary(plugin), table(plugin.Config, parameters(GROUPS[kind], plugin))) if part)


def table(schema: type[Params], rows: list[tuple[str, str, str, str]]) -> str:
    """A Markdown table of `rows` (from `describe_schema(schema)`); a nested schema points at its own table."""
    lines = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for name, kind, default, text in rows:
        annotation = schema.model_fields[name].annotation
        if isinstance(annotation, type) and issubclass(annotation, Params):
            kind, default, text = "mapping", "", f"See [`{name}`](#{name}). {summary(annotation)}"
        choices = " | ".join(choice.strip() for choice in kind.split("|"))  # lets a long list of choices wrap
        lines.append(f"| `{name}` | {code(choices)} | {code(default)} | {cell(text)} |")
    return "\n".join(lines)


def code(text: str) -> str:
    """`text` as inline code in a table cell (a pipe inside a code span does not end the cell)."""
    return f"`{text}`" if text else ""


def cell(text: str) -> str:
    """Escape what would end a Markdown table cell: pipes outside code spans, and line breaks."""
    parts = text.replace("\n", " ").split("`")
    return "`".join(part if inside else part.replace("|", "\\|") for part, inside in zip(parts, [False, True] * len(parts)))
