"""Every chain of the registered stage kinds either runs to a measured, loadable export or is
refused in one line before any stage runs; which is which, only the stages' declarations say.

The chains come from tests/_chains.py (every ordered chain of distinct stage kinds and their
variants, ending in export). `check_recipe` sorts them without TensorFlow; accepted ones run on
digits with one epoch per stage, sharing one stage cache so that common prefixes train once.
The default run takes a seeded sample; `pytest -m heavy tests/test_compositions.py -s` takes them all.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe, to_plain
from pipeline.errors import PipelineError
from pipeline.measure import litert
from pipeline.run.runner import RunInfo, run
from tests._chains import Chain, chains, sample
from tests._runs import NO_SAFETY_NET, compose_config

# Few latency repetitions: the measurement must happen, its precision does not matter here.
MEASURE = ["measure.latency_runs=3", "measure.warmup_runs=1"]


def classify(found: list[Chain], base: dict) -> tuple[list[Chain], list[tuple[Chain, str]]]:
    """The chains `check_recipe` accepts, and those it refuses with its message."""
    accepted, refused = [], []
    for chain in found:
        try:
            check_recipe({**base, "stages": chain.stages})
            accepted.append(chain)
        except PipelineError as error:
            refused.append((chain, str(error)))
    return accepted, refused


def run_chain(chain: Chain, outputs: Path, number: int):
    """Run one chain through the runner, as `python -m pipeline` would, in a shared outputs folder."""
    cfg = compose_config(outputs, *MEASURE, NO_SAFETY_NET)
    cfg.stages = chain.stages
    return run(cfg, RunInfo(run_dir=outputs / "runs" / str(number), recipe="chain"))


def check_finished(chain: Chain, result, x_test: np.ndarray) -> None:
    """Every stage measured, and each exported model file loads and predicts."""
    assert [row.stage for row in result.rows] == list(chain.stages), chain.name
    for row in result.rows:
        assert row.metrics["size_bytes"] > 0 and 0 <= row.metrics["accuracy"] <= 1, (chain.name, row)
        assert row.metrics["latency_p50_ms"] > 0, (chain.name, row)
    models = [p for p in result.exports if p.suffix in (".tflite", ".keras")]
    assert models, chain.name
    for path in models:
        if path.suffix == ".tflite":
            logits = litert.predict(path, x_test[:4])
        else:
            import tf_keras as keras

            logits = keras.models.load_model(path, compile=False).predict(x_test[:4], verbose=0)
        assert logits.shape[0] == 4 and np.isfinite(logits).all(), (chain.name, path)


def check_refused(chain: Chain, message: str, tmp_path: Path) -> None:
    """The refusal is one line naming a stage key, and the runner stops with it before any work."""
    assert "\n" not in message and message.startswith("stages.") and "; " in message, (chain.name, message)
    cfg = compose_config(tmp_path, *MEASURE)
    cfg.stages = chain.stages
    run_dir = tmp_path / "run"
    with pytest.raises(PipelineError) as raised:
        run(cfg, RunInfo(run_dir=run_dir, recipe="chain"))
    assert str(raised.value) == message
    assert not run_dir.exists() and not (tmp_path / "outputs").exists(), chain.name


def run_all(accepted: list[Chain], outputs: Path, log=print) -> float:
    """Run and check each accepted chain, going on past failures to list them all; the seconds taken."""
    from tests._tiny import digits

    x_test = digits().x_test
    started, failed = time.perf_counter(), []
    for number, chain in enumerate(accepted):
        try:
            check_finished(chain, run_chain(chain, outputs, number), x_test)
            outcome = "finished"
        except Exception as error:  # noqa: BLE001  every failure is reported below, with its chain
            failed.append(f"{chain.name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
            outcome = "FAILED"
        log(f"chain {number + 1}/{len(accepted)} {outcome} ({time.perf_counter() - started:.0f} s): {chain.name}")
    assert not failed, "accepted chains that failed at run time:\n" + "\n".join(failed)
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return to_plain(compose_config(tmp_path_factory.mktemp("base")))


def test_every_kind_and_variant_appears_in_the_generated_chains():
    found = chains()
    kinds = {kind for chain in found for kind, _ in chain.steps}
    from pipeline.plugin import registry

    assert kinds == set(registry.available(registry.STAGES))
    names = {chain.name for chain in found}
    for step in ("quantize(mode=int16x8)", "qat(scheme=pcqat)", "prune(m_by_n=[2, 4])", "distill", "cluster",
                 "sensitivity -> prune(final_sparsity=plan)"):
        assert any(step in name for name in names), step
    assert all(chain.steps[-1][0] == "export" and len(chain.steps) <= 5 for chain in found)


def test_orders_are_sorted_by_the_stages_declarations(base):
    def verdict(*steps: tuple[str, dict]) -> bool:
        import json

        return bool(classify([Chain(tuple((k, json.dumps(p, sort_keys=True)) for k, p in steps))], base)[0])

    assert verdict(("train", {}), ("prune", {}), ("cluster", {}), ("qat", {"scheme": "pcqat"}), ("export", {}))
    assert not verdict(("train", {}), ("cluster", {}), ("prune", {}), ("qat", {"scheme": "pcqat"}), ("export", {}))
    assert not verdict(("train", {}), ("export", {}))  # nothing makes the TFLite file export ships by default
    assert verdict(("train", {}), ("export", {"formats": ["keras"]}))
    assert not verdict(("prune", {}), ("train", {}), ("export", {"formats": ["keras"]}))
    plan = ("prune", {"final_sparsity": "plan"})
    assert verdict(("train", {}), ("sensitivity", {}), plan, ("export", {"formats": ["keras"]}))
    # A plan measured before channel pruning is for wider layers than prune would get.
    assert not verdict(("train", {}), ("sensitivity", {}), ("channel_prune", {}), plan, ("export", {"formats": ["keras"]}))
    assert verdict(("train", {}), ("channel_prune", {}), ("sensitivity", {}), plan, ("export", {"formats": ["keras"]}))


@pytest.mark.slow
def test_a_sample_of_chains_runs_or_is_refused_before_work(tmp_path_factory, base):
    candidates = sample(chains(), 1500, seed=19)
    accepted, refused = classify(candidates, base)
    assert accepted and refused
    for chain, message in random.Random(19).sample(refused, 6):
        check_refused(chain, message, tmp_path_factory.mktemp("refused"))
    run_all(sample(accepted, 5, seed=19), tmp_path_factory.mktemp("chains"))


@pytest.mark.heavy
def test_every_chain_runs_or_is_refused_before_work(tmp_path_factory, base):
    started = time.perf_counter()
    found = chains()
    accepted, refused = classify(found, base)
    planned = time.perf_counter() - started
    for chain, message in refused:
        assert "\n" not in message and message.startswith("stages."), (chain.name, message)
    for chain, message in random.Random(19).sample(refused, 20):
        check_refused(chain, message, tmp_path_factory.mktemp("refused"))
    seconds = run_all(accepted, tmp_path_factory.mktemp("chains"))
    print(f"\n{len(found)} chains: {len(refused)} refused at validation ({planned:.0f} s to sort them all), "
          f"{len(accepted)} accepted, run and checked in {seconds:.0f} s ({seconds / len(accepted):.1f} s each)")
