"""Objectives: which final-stage metrics a search may optimise, and in which direction."""

from __future__ import annotations

import pytest

from pipeline.config.objectives import check, check_directions, directions, values
from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from tests._runs import compose_config, run_cli


def test_each_objective_moves_its_natural_way():
    assert directions(["val_accuracy", "gzip_bytes", "latency_p50_ms", "sparsity"]) == [
        "maximize", "minimize", "minimize", "maximize"]
    assert values({"val_accuracy": 0.9, "gzip_bytes": 100.0}, ["gzip_bytes"]) == 100.0
    assert values({"val_accuracy": 0.9, "gzip_bytes": 100.0}, ["val_accuracy", "gzip_bytes"]) == [0.9, 100.0]


@pytest.mark.parametrize(("names", "message"), [
    (["accuracy"], "'accuracy' is the test split's, which never steers a choice; use val_accuracy"),
    (["val_acuracy"], "'val_acuracy' is not a measured metric; did you mean 'val_accuracy'?"),
    (["gzip_bytes", "gzip_bytes"], "names a metric twice"),
    ([], "empty"),
])
def test_bad_objectives_are_one_line(names, message):
    with pytest.raises(PipelineError, match=f"^objectives: .*{message}"):
        check(names)


def test_directions_must_match_the_objectives():
    check_directions(["maximize", "minimize"], ["val_accuracy", "gzip_bytes"])
    with pytest.raises(PipelineError, match="1 direction.*2 objective"):
        check_directions("maximize", ["val_accuracy", "gzip_bytes"])
    with pytest.raises(PipelineError, match="minimize val_accuracy would search for the worst models"):
        check_directions(["minimize", "minimize"], ["val_accuracy", "gzip_bytes"])


def test_objectives_are_checked_with_the_recipe(tmp_path):
    assert check_recipe(compose_config(tmp_path)).settings.objectives == ["val_accuracy"]
    with pytest.raises(PipelineError, match="^objectives: 'size' is not a measured metric"):
        check_recipe(compose_config(tmp_path, "objectives=[val_accuracy,size]"))


def test_a_search_on_the_test_accuracy_stops_before_any_work(tmp_path):
    done = run_cli("-m", "objectives=[accuracy,gzip_bytes]", "stages.prune.final_sparsity=0.5,0.6", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: objectives: 'accuracy'")
    assert not (tmp_path / "outputs").exists()
