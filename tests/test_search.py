"""Searching and scaling out on existing engines: Hydra's Optuna sweeper (multi-objective), and
sweeps whose jobs run in parallel under the Ray and submitit launchers, sharing one stage cache
and one MLflow store."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.config.arguments import installed
from tests._runs import ROOT, TINY, run_cli


def needs(module: str, extra: str):
    """Skip when an optional engine is not installed (the `test` extra installs them all)."""
    return pytest.mark.skipif(
        not installed(module), reason=f"{module} is not installed (pip install -e '.[{extra}]')"
    )


with_optuna = needs("hydra_plugins.hydra_optuna_sweeper", "search")

# Python started as if no Hydra plugin were installed (a plain `pip install -e .`): no finder sees the
# `hydra_plugins` package, so importing it fails and find_spec of a plugin in it raises, as then.
WITHOUT_PLUGINS = """\
import sys
from importlib.machinery import PathFinder

class WithoutHydraPlugins(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] == "hydra_plugins" else super().find_spec(name, path, target)

sys.meta_path[sys.meta_path.index(PathFinder)] = WithoutHydraPlugins
"""


def without_plugins(code: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` with no Hydra plugin importable."""
    return subprocess.run([sys.executable, "-c", WITHOUT_PLUGINS + code, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)

# The shipped search recipe with a narrower space and short training, so that a few trials run in seconds.
TINY_SEARCH = """\
# @package _global_
defaults:
  - search_int8
  - _self_
stages:
  train:   {epochs: 3}
  distill: {epochs: 2}
  prune:   {epochs: 2}
  cluster: {epochs: 1}
measure: {latency_runs: 5, warmup_runs: 1}
budget: {safety_net: null}  # a few epochs: the trials test the search, not the models
hydra:
  sweeper:
    n_trials: 3
    params:
      stages.distill.student.width: choice(0.5, 1.0)
      stages.prune.final_sparsity: choice(0.5, 0.6)
      stages.cluster.number_of_clusters: choice(8, 16)
"""


def finished_runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Three trials of the multi-objective search on digits, then the report of the sweep."""
    cwd = tmp_path_factory.mktemp("search")
    (cwd / "conf" / "recipe").mkdir(parents=True)
    (cwd / "conf" / "recipe" / "search_tiny.yaml").write_text(TINY_SEARCH)
    done = run_cli("-m", "--config-dir", str(cwd / "conf"), "recipe=search_tiny", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "pipeline.report", "--sweep", "latest"],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    (results,) = (cwd / "outputs" / "multirun").glob("*/optimization_results.yaml")
    return cwd, yaml.safe_load(results.read_text()), finished_runs(f"sqlite:///{cwd}/outputs/mlflow.db"), report


@with_optuna
@pytest.mark.slow
def test_optuna_searches_validation_accuracy_against_size(search):
    _, results, runs, _ = search
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    # The sweeper saw what each run measured on the validation split, not the test accuracy.
    measured = {(r.data.metrics["val_accuracy"], r.data.metrics["gzip_bytes"]) for r in runs}
    assert results["solutions"] and all(tuple(s["values"]) in measured for s in results["solutions"])
    assert set(results["solutions"][0]["params"]) == {
        "stages.distill.student.width", "stages.prune.final_sparsity",
        "stages.cluster.number_of_clusters", "stages.quantize.mode"}  # plain names, no ++
    assert sorted(r.data.tags["cached_stages"].split(",")[0] for r in runs) == ["none", "train", "train"]


@with_optuna
@pytest.mark.slow
def test_report_marks_and_tags_the_front_of_the_search(search):
    cwd, results, runs, report = search
    assert report.returncode == 0, report.stderr[-2000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/outputs/mlflow.db")
    front = {r.info.run_id for r in runs if client.get_run(r.info.run_id).data.tags["pareto_front"] == "true"}
    assert len(front) == len(results["solutions"])  # the report and Optuna agree on the front
    marked = [line for line in report.stdout.splitlines() if line.startswith("| ") and line.rstrip().endswith("| *     |")]
    assert {line.split("|")[1].strip() for line in marked} == {run_id[:8] for run_id in front}


@pytest.mark.slow
@with_optuna
def test_sweeper_directions_must_follow_the_objectives(tmp_path):
    done = run_cli("-m", "recipe=search_int8", "hydra.sweeper.direction=[minimize,minimize]", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.direction: minimize val_accuracy would search for the worst models; "
        "use maximize for val_accuracy")
    # Optuna's own default direction is minimize: a plain `hydra/sweeper=optuna` would seek the least accurate model.
    done = run_cli("-m", "hydra/sweeper=optuna", "stages.prune.final_sparsity=choice(0.25,0.5)", cwd=tmp_path)
    assert done.returncode == 2 and "error: hydra.sweeper.direction: minimize val_accuracy" in done.stderr
    done = run_cli("-m", "recipe=search_int8", "data.val_fraction=0", cwd=tmp_path)
    assert done.returncode == 2 and "error: data.val_fraction: 0 leaves no validation split" in done.stderr
    assert not (tmp_path / "outputs").exists()


def assert_two_parallel_jobs_shared_everything(cwd):
    runs = finished_runs(f"sqlite:///{cwd}/outputs/mlflow.db")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["stages.prune.final_sparsity"] for r in runs} == {"0.25", "0.5"}
    assert len({r.data.tags["sweep"] for r in runs}) == 1
    # One job trained; the other waited on the cache lock and reused the model.
    assert sorted(r.data.tags["cached_stages"] for r in runs) == ["none", "train"]
    exported = sorted(cwd.glob("outputs/multirun/*/*/export/model.tflite"))
    assert len(exported) == 2 and all(p.stat().st_size > 0 for p in exported)


SWEEP = ["-m", "recipe=mobile_int8", *TINY, "stages.prune.final_sparsity=0.25,0.5"]


# Starting a local Ray cluster takes over a minute on 2 cores: heavy. Submitit's local launcher below
# checks the same parallel jobs, shared cache lock and one MLflow sweep in the default run.
@needs("hydra_plugins.hydra_ray_launcher", "ray")
@pytest.mark.heavy
def test_ray_launcher_runs_jobs_in_parallel_on_a_local_cluster(tmp_path):
    # The launcher's ray.init() starts a local Ray cluster for the sweep and stops it at the end.
    done = run_cli(*SWEEP, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                   "+hydra.launcher.ray.init.include_dashboard=false", cwd=tmp_path, env={"RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert_two_parallel_jobs_shared_everything(tmp_path)


@needs("hydra_plugins.hydra_submitit_launcher", "slurm")
@pytest.mark.slow
def test_submitit_local_launcher_runs_jobs_in_parallel(tmp_path):
    done = run_cli(*SWEEP, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_two_parallel_jobs_shared_everything(tmp_path)


def test_a_missing_engine_is_one_line_naming_its_extra(monkeypatch):
    from pipeline.config import arguments
    from pipeline.errors import PipelineError

    monkeypatch.setitem(arguments.PLUGINS, "ray", ("hydra_plugins.hydra_ray_launcher_absent", "ray"))
    monkeypatch.setitem(arguments.PLUGINS, "pareto", ("hydra_plugins.hydra_optuna_sweeper_absent", "search"))
    with pytest.raises(PipelineError, match=r'^hydra/launcher=ray: needs hydra-ray-launcher-absent; pip install -e "\.\[ray\]"$'):
        arguments.expand_arguments(["-m", "recipe=mobile_int8", "hydra/launcher=ray"])
    with pytest.raises(PipelineError, match=r"^hydra/sweeper=pareto: needs .*\[search\]"):
        arguments.expand_arguments(["-m", "recipe=search_int8"])  # the recipe picks the sweeper in its defaults


@pytest.mark.parametrize("args, extra", [
    (["recipe=search_int8"], 'hydra/sweeper=pareto: needs hydra-optuna-sweeper; pip install -e ".[search]"'),
    (["recipe=mobile_int8", "hydra/launcher=ray"], 'hydra/launcher=ray: needs hydra-ray-launcher; pip install -e ".[ray]"'),
])
def test_without_any_hydra_plugin_a_search_names_the_extra(tmp_path, args, extra):
    run = "import runpy; sys.argv[0] = 'pipeline'; runpy.run_module('pipeline', run_name='__main__')"
    done = without_plugins(run, "-m", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: {extra}"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_without_any_hydra_plugin_the_search_tests_skip(tmp_path):
    tests = "import pytest; sys.exit(pytest.main(['-q', '-n', '0', '-p', 'no:cacheprovider', '-m', 'slow', '-k', 'directions', sys.argv[1]]))"
    done = without_plugins(tests, __file__, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 skipped" in done.stdout.splitlines()[-1]
