"""The safety net: no run hands over a model far below the one it trained without stopping."""

from __future__ import annotations

import logging
import math

import pytest
from mlflow import MlflowClient

from pipeline.config.settings import SAFETY_NET, BudgetParams
from pipeline.errors import PipelineError
from pipeline.run.budget import Ledger, check_shipped
from pipeline.run.runner import RunInfo, run
from tests._runs import compose_config
from tests._tiny import trained_standardized


def books(*accuracies: tuple[str, float], allowed: float = SAFETY_NET) -> Ledger:
    """A ledger holding each stage's validation accuracy in order."""
    ledger = Ledger(allowed)
    for stage, accuracy in accuracies:
        ledger.record(stage, accuracy)
    return ledger


def test_a_collapsed_model_fails_naming_the_stage_that_lost_it_and_the_settings():
    ledger = books(("train", 0.9775), ("prune", 0.9798), ("quantize", 0.3528), ("export", 0.3528))
    with pytest.raises(PipelineError) as error:
        check_shipped(ledger, BudgetParams())
    message = str(error.value)
    assert message.startswith("stages.quantize: the shipped model's validation accuracy 0.3528 is 62.47 points below")
    assert "'quantize' lost 62.70 points" in message and "budget.safety_net=null" in message
    assert "\n" not in message


def test_a_loss_within_the_margin_ships():
    check_shipped(books(("train", 0.98), ("prune", 0.96), ("quantize", 0.94)), BudgetParams())  # 4 points < 5


def test_the_budget_sets_the_margin_and_null_opts_out():
    ledger = books(("train", 0.98), ("quantize", 0.96), allowed=0.01)
    with pytest.raises(PipelineError, match=r"more than budget.accuracy_drop allows \(1.00 points\)"):
        check_shipped(ledger, BudgetParams(accuracy_drop=0.01))
    check_shipped(ledger, BudgetParams(accuracy_drop=0.01, safety_net=None))
    assert BudgetParams(safety_net=None).margin() is None and BudgetParams(accuracy_drop=0.02).margin() == 0.02


def test_no_validation_split_leaves_nothing_to_check():
    check_shipped(books(("train", math.nan), ("quantize", math.nan)), BudgetParams())


@pytest.fixture(scope="module")
def hostile_file(tmp_path_factory):
    """A trained CNN that standardises each pixel inside the model: full-integer int8 ruins it."""
    return trained_standardized(tmp_path_factory.mktemp("hostile")).path


def ptq(tmp_path, model_path, *overrides):
    """The ptq_int8 recipe on a saved model, registering what it ships."""
    cfg = compose_config(
        tmp_path, "recipe=ptq_int8", "model=file", f"model.path={model_path}", "measure.latency_runs=2",
        "measure.warmup_runs=0", "tracking.register_as=shipped", *overrides,
    )
    return cfg, RunInfo(run_dir=tmp_path / "run", recipe="ptq_int8")


@pytest.mark.slow
def test_a_run_that_ships_a_broken_conversion_fails_registers_nothing_and_prints_its_table(tmp_path, hostile_file, caplog):
    cfg, info = ptq(tmp_path, hostile_file)
    with caplog.at_level(logging.INFO, logger="pipeline"), pytest.raises(PipelineError) as error:
        run(cfg, info)
    assert str(error.value).startswith("stages.quantize: the shipped model's validation accuracy")
    assert "than the safety net (budget.safety_net) allows (5.00 points)" in str(error.value)
    assert "summary of ptq_int8" in caplog.text and "| quantize |" in caplog.text
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    (only,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert only.info.status == "FAILED"
    assert client.search_registered_models() == []


def test_opting_out_ships_the_same_model(tmp_path, hostile_file):
    cfg, info = ptq(tmp_path, hostile_file, "budget.safety_net=null")
    result = run(cfg, info)
    assert result.rows[-1].metrics["val_accuracy"] < 0.5  # ruined, shipped because the recipe said so
    assert [m.name for m in MlflowClient(tracking_uri=cfg.tracking.uri).search_registered_models()] == ["shipped"]
