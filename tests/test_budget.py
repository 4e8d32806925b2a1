"""The recipe-level accuracy budget: checked before any work, kept on the validation split, recorded per stage."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from pipeline.config.recipe import check_recipe
from pipeline.config.settings import BudgetParams
from pipeline.errors import PipelineError
from pipeline.run.budget import Budget, Ledger
from pipeline.run.runner import RunInfo, run, stage_key
from tests._runs import TINY, compose_config


def test_the_ledger_records_what_each_stage_spent():
    ledger = Ledger(0.02)
    assert ledger.budget() is None  # no reference before the first model
    assert ledger.record("train", 0.95) == {"budget_spent": 0.0}
    assert ledger.record("prune", 0.94)["budget_spent"] == pytest.approx(0.01)
    ledger.record("quantize", 0.945)
    budget = ledger.budget()
    assert budget.reference == 0.95 and budget.floor == pytest.approx(0.93) and budget.available == 0.945
    assert dict(budget.spent) == pytest.approx({"prune": 0.01, "quantize": -0.005})
    assert budget.remaining == pytest.approx(0.015) and budget.meets(0.93) and not budget.meets(0.9299)
    assert ledger.totals()["budget_spent"] == pytest.approx(0.005)
    assert "| prune | 0.9400 | +0.0100 | +0.0100 |" in ledger.table()


def test_budget_is_a_share_of_accuracy():
    with pytest.raises(ValueError):
        BudgetParams(accuracy_drop=1.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stages.quantize.fallback=auto"], r"^stages.quantize.fallback: auto keeps layers float until an accuracy budget holds, but none is set"),
        (["budget.accuracy_drop=0.01", "data.val_fraction=0"], r"^budget.accuracy_drop: the budget is measured on the validation split"),
        (["stages.quantize.accuracy_tolerance=0.01", "data.val_fraction=0"], r"^stages.quantize.accuracy_tolerance: the gate compares validation accuracies"),
        (["stages.quantize.fallback=auto", "stages.quantize.mode=float16", "budget.accuracy_drop=0.01"], r"fallback=auto needs mode=int8"),
    ],
)
def test_budget_mistakes_stop_before_any_work(tmp_path, overrides, message):
    with pytest.raises(PipelineError, match=message):
        check_recipe(compose_config(tmp_path, *overrides))


def test_a_budget_or_a_tolerance_lets_fallback_validate(tmp_path):
    assert check_recipe(compose_config(tmp_path, "stages.quantize.fallback=auto", "budget.accuracy_drop=0.01"))
    assert check_recipe(compose_config(tmp_path, "stages.quantize.fallback=auto", "stages.quantize.accuracy_tolerance=0.01"))


def test_a_changed_budget_recomputes_only_the_stages_that_choose_within_it(tmp_path):
    def keys(drop):
        plan = check_recipe(compose_config(tmp_path, f"budget.accuracy_drop={drop}", "stages.quantize.fallback=auto"))
        return {p.name: stage_key(plan, p, "start", FakeData()) for p in plan.stages}

    first, second = keys(0.01), keys(0.02)
    assert first["train"] == second["train"] and first["prune"] == second["prune"]
    assert first["quantize"] != second["quantize"]


class FakeData:
    """Stands in for the data's fingerprint only: keys are compared, nothing is trained."""

    def fingerprint(self) -> str:
        return "same"


@pytest.mark.slow
def test_the_budget_recipe_keeps_the_books_and_logs_its_reports(tmp_path):
    cfg = compose_config(
        tmp_path, "recipe=smallest_within_1pt", *TINY, "stages.train.epochs=8", "stages.prune.epochs=3",
        "budget.accuracy_drop=0.1", "stages.sensitivity.sparsities=[0.5,0.8,0.9]",
    )
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="smallest_within_1pt"))
    train, sensitivity, prune, _quantize, export = (row.metrics for row in result.rows)
    assert train["budget_spent"] == 0.0 and export["val_accuracy"] >= train["val_accuracy"] - 0.1
    assert prune["budget_spent"] == pytest.approx(sensitivity["val_accuracy"] - prune["val_accuracy"])
    assert prune["sparsity"] == pytest.approx(0.8, abs=0.02)
    assert "val acc" in (result.run_dir / "summary.md").read_text()
    assert "| quantize |" in (result.run_dir / "budget.md").read_text()
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics["budget_reference_accuracy"] == pytest.approx(train["val_accuracy"])
    assert metrics["prune.budget_spent"] == pytest.approx(prune["budget_spent"])
    assert metrics["budget_remaining"] == pytest.approx(export["val_accuracy"] - (train["val_accuracy"] - 0.1))
    reports = {a.path for a in client.list_artifacts(result.run_id, "sensitivity")}
    assert reports == {"sensitivity/sensitivity.md", "sensitivity/sensitivity.png", "sensitivity/sparsity_plan.json"}
    described = json.loads((result.run_dir / "export" / "model.json").read_text())
    assert described["budget"]["split"] == "validation" and described["budget"]["accuracy_drop"] == 0.1
    assert isinstance(described["quantization"]["float_layers"], list)


def test_budget_floor_is_relative_to_the_reference():
    budget = Budget(reference=0.9, reference_stage="train", allowed_drop=0.1, available=0.85)
    assert budget.floor == pytest.approx(0.8) and budget.remaining == pytest.approx(0.05)
    assert budget.as_metadata()["reference_stage"] == "train"


@pytest.mark.slow
def test_a_recipe_that_trains_nothing_measures_its_budget_from_the_saved_model(tmp_path, trained):
    cfg = compose_config(
        tmp_path, "recipe=ptq_int8", "model=file", f"model.path={trained.path}", "budget.accuracy_drop=0.05",
        "stages.quantize.fallback=auto", "measure.latency_runs=3", "measure.warmup_runs=1",
    )
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="ptq_int8"))
    table = (result.run_dir / "budget.md").read_text()
    assert "(validation accuracy of 'model')" in table and "| model |" in table
    quantize = result.rows[0].metrics
    assert quantize["val_accuracy"] >= float(table.split("floor ")[1].split()[0])
