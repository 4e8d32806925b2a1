"""Layering: technique code never depends on the stage contract or on a stage, and no stage imports another.

Read from the source with `ast`, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The stage contract and the runner, under today's names and those of the planned layout.
CONTRACT = (
    "pipeline.plugin.stage", "pipeline.plugin.stage", "pipeline.api", "pipeline.config.recipe", "pipeline.config.recipe",
    "pipeline.run.runner", "pipeline.run.runner",
)


def modules(package: str) -> list[Path]:
    """The Python files of a top-level package of the project."""
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module `path` imports, by its full dotted name; `from a import b` counts as `a` and `a.b`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether module `name` is one of `prefixes` or inside one."""
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


@pytest.mark.parametrize("path", modules("techniques"), ids=lambda path: path.name)
def test_techniques_import_neither_the_stage_contract_nor_stages(path):
    wrong = sorted(name for name in imported(path) if within(name, (*CONTRACT, "stages")))
    assert not wrong, f"{path.relative_to(ROOT)} imports {', '.join(wrong)}"


@pytest.mark.parametrize("path", [p for p in modules("stages") if p.name != "__init__.py"], ids=lambda path: path.name)
def test_no_stage_imports_another_stage(path):
    wrong = sorted(name for name in imported(path) if within(name, ("stages",)))
    assert not wrong, f"{path.relative_to(ROOT)} imports {', '.join(wrong)}"


def test_stages_holds_only_stage_modules():
    private = [path.name for path in modules("stages") if path.name.startswith("_") and path.name != "__init__.py"]
    assert not private, f"technique modules belong in techniques/: {', '.join(private)}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("def run():\n    from stages import quantize\n    import pipeline.plugin.stage\n")
    assert {"stages", "stages.quantize", "pipeline.plugin.stage"} <= imported(source)
    assert within("stages.quantize", ("stages",)) and not within("stagesx", ("stages",))
