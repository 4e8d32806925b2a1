"""The stage cache: reruns and sweeps reuse unchanged prefixes; damage is detected; jobs wait."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from pipeline.commands.cache import main as cache_cli
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.run.cache import StageCache, cache_key
from pipeline.run.runner import RunInfo, run
from tests._runs import TINY, compose_config


def fake_output(folder, text="weights"):
    """A stage work folder holding one model file (the cache stores any files)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_text(text)
    return ModelArtifact(
        folder / "model.keras", ModelFormat.KERAS, "train", None, {"target_sparsity": 0.5}, frozenset({Effect.PRUNED}),
        {"teacher_accuracy": 0.9}, {"tflite_accuracy": 0.8},
    )


def test_round_trip_restores_files_and_metadata(tmp_path):
    cache = StageCache(tmp_path / "cache")
    artifact = fake_output(tmp_path / "run1" / "0_train")
    cache.put("k1", "train", artifact, artifact.path.parent, {"m": {"accuracy": 0.9}})
    entry = cache.get("k1")
    restored = cache.restore(entry, tmp_path / "run2" / "0_train", "train", None)
    assert restored.path.read_text() == "weights"
    assert restored.metadata == {"target_sparsity": 0.5} and restored.format is ModelFormat.KERAS
    assert restored.effects == {Effect.PRUNED}
    assert restored.metrics == {"teacher_accuracy": 0.9} and restored.gate == {"tflite_accuracy": 0.8}
    assert entry.record["measurements"] == {"m": {"accuracy": 0.9}}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "record"])
def test_damaged_entry_is_discarded(tmp_path, damage):
    cache = StageCache(tmp_path / "cache")
    artifact = fake_output(tmp_path / "w")
    cache.put("k1", "train", artifact, artifact.path.parent, {})
    stored = tmp_path / "cache" / "k1" / "model.keras"
    if damage == "truncate":
        stored.write_text("wei")
    elif damage == "flip":
        stored.write_text("weighTs")
    elif damage == "delete":
        stored.unlink()
    else:
        (tmp_path / "cache" / "k1" / "entry.json").write_text("{not json")
    assert cache.get("k1") is None
    assert not (tmp_path / "cache" / "k1").exists()


def test_parallel_jobs_compute_an_entry_once(tmp_path):
    cache = StageCache(tmp_path / "cache")
    computed, reused = [], []

    def job(name):
        with cache.lock("shared"):
            if cache.get("shared") is not None:
                reused.append(name)
                return
            time.sleep(0.3)  # the other job arrives while this one computes
            computed.append(name)
            cache.put("shared", "train", fake_output(tmp_path / name), tmp_path / name, {})

    threads = [threading.Thread(target=job, args=(f"job{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(computed) == 1 and len(reused) == 2


def test_key_depends_on_every_part():
    base = dict(stage="prune", config={"final_sparsity": 0.5}, input="k0", data="d", model={}, seed=1)
    keys = {cache_key(**base)}
    for part, value in [("config", {"final_sparsity": 0.6}), ("input", "k9"), ("data", "e"), ("seed", 2)]:
        keys.add(cache_key(**{**base, part: value}))
    assert len(keys) == 5
    assert cache_key(**base) == cache_key(**dict(reversed(base.items())))


@pytest.mark.slow
def test_rerun_and_late_change_reuse_the_prefix(tmp_path, capsys):
    def once(*overrides):
        cfg = compose_config(tmp_path, *TINY, *overrides)
        result = run(cfg, RunInfo(run_dir=tmp_path / "runs" / str(time.time_ns())))
        return {row.stage: row.cached for row in result.rows}, result

    first, _ = once()
    assert not any(first.values())
    again, result = once()
    assert again == {"train": True, "prune": True, "quantize": True, "export": False}
    assert (result.run_dir / "export" / "model.tflite").exists()  # exports are written every run
    late, _ = once("stages.quantize.mode=dynamic")
    assert late == {"train": True, "prune": True, "quantize": False, "export": False}
    off, result = once("cache=false")
    assert not any(off.values())

    tags = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db").get_run(result.run_id).data.tags
    assert tags["cached_stages"] == "none"

    cache_cli(["list", "--outputs", str(tmp_path / "outputs")])
    assert "4 entries" in capsys.readouterr().out  # train, prune, quantize int8, quantize dynamic
    cache_cli(["clear", "--outputs", str(tmp_path / "outputs")])
    assert "removed 4 cache entries" in capsys.readouterr().out


def test_a_replaced_model_file_invalidates_its_entries(tmp_path):
    from pipeline.run.cache import referenced_files

    teacher = tmp_path / "teacher.keras"
    teacher.write_text("v1")
    config = {"teacher": str(teacher), "student": {"name": "small_cnn"}, "epochs": 3}
    before = cache_key(stage="distill", files=referenced_files(config))
    assert cache_key(stage="distill", files=referenced_files(config)) == before
    teacher.write_text("v2")
    assert cache_key(stage="distill", files=referenced_files(config)) != before
    assert referenced_files({"optimizer": "adam", "layers": []}) == {}
