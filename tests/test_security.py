"""Recipes are data: they may not make the pipeline import code the user has not allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from tests._runs import compose_config, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_a_recipe_cannot_name_arbitrary_code(tmp_path):
    done = run_cli("model=custom", "model.target=os:system", cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "model.target: os:system is outside the modules a recipe may import" in line
    assert "export PIPELINE_ALLOWED_MODULES=os" in line
    assert not (tmp_path / "outputs").exists()


def test_the_user_allows_modules_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "team_models.py").write_text("def tiny(input_shape, num_classes):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    override = ("model=custom", "model.target=team_models:tiny")
    with pytest.raises(PipelineError, match="outside the modules"):
        check_recipe(compose_config(tmp_path, *override))
    monkeypatch.setenv("PIPELINE_ALLOWED_MODULES", "other, team_models")
    assert check_recipe(compose_config(tmp_path, *override)).model_builder.config.target == "team_models:tiny"
    monkeypatch.setenv("PIPELINE_ALLOWED_MODULES", "team")  # a prefix of the name is not its package
    with pytest.raises(PipelineError, match="outside the modules"):
        check_recipe(compose_config(tmp_path, *override))
    monkeypatch.setenv("PIPELINE_ALLOW_ANY_TARGET", "1")
    assert check_recipe(compose_config(tmp_path, *override)).model_builder.config.target == "team_models:tiny"


SERVER = re.compile(r"^(?:mlflow (?:server|ui)|python -m pipeline\.launch)[^\n]*", flags=re.M)


def test_servers_in_the_documentation_bind_to_loopback():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    servers = {page.relative_to(ROOT).as_posix(): SERVER.findall(page.read_text()) for page in pages}
    assert servers["README.md"] and servers["docs/guides/clusters.md"]  # the pages that start servers are read
    for command in (command for found in servers.values() for command in found):
        assert "--host 0.0.0.0" not in command
        assert command.startswith("mlflow ui") or "127.0.0.1" in command or "pipeline.launch" in command, command
