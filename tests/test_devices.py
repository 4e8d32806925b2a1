"""The device group: validation without TensorFlow, device errors, mirrored vs one device, mixed precision, XLA, doctor."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.device.params import DeviceParams, worker_role
from pipeline.device.setup import DeviceSetup
from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect
from tests._runs import ROOT, compose_config, run_cli
from tests._tiny import accuracy, context, digits


def gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


@pytest.mark.slow
def test_device_group_is_checked_without_importing_tensorflow(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from tests._runs import compose_config
        from pipeline.config.recipe import check_recipe
        plan = check_recipe(compose_config(Path({str(tmp_path)!r}), "device=gpu", "device.jit_compile=true"))
        print(plan.device.params.name, plan.device.params.precision, plan.device.params.jit_compile)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras")))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["gpu mixed_float16 True", "[]"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=cpu", "device.strategy=tpu"], "device.strategy=tpu: needs a TPU but device.name=cpu; use device=tpu"),
        (["device.precision=fp16"], "device.precision: expected 'auto', 'float32', 'mixed_float16' or 'mixed_bfloat16'"),
        (["device.jit_compiled=true"], "device.jit_compiled: unknown key; did you mean 'jit_compile'?"),
        (["device=gpu", "device.cpu_devices=2"], "device.cpu_devices=2: splits the CPU only"),
    ],
)
def test_device_mistakes_name_the_key(tmp_path, overrides, message):
    with pytest.raises(PipelineError) as raised:
        check_recipe(compose_config(tmp_path, *overrides))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_tf_config_gives_the_worker_role():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    second = worker_role({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})})
    assert (second.workers, second.index, second.is_chief) == (2, 1, False)
    first = worker_role({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})})
    assert first.is_chief
    with_chief = {"chief": ["127.0.0.1:3"], **cluster}
    assert not worker_role({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})}).is_chief
    assert worker_role({}).workers == 1 and worker_role({}).is_chief
    with pytest.raises(PipelineError, match="TF_CONFIG: not a valid cluster description"):
        worker_role({"TF_CONFIG": "{not json"})


@pytest.mark.slow
def test_absent_gpu_is_one_line_listing_what_is_there(tmp_path):
    if gpu_present():
        pytest.skip("a GPU is visible here")
    done = run_cli("device=gpu", f"outputs={tmp_path / 'outputs'}", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == "error: device.name=gpu: no GPU visible; available: CPU:0; use device=auto or device=cpu"
    assert "Traceback" not in done.stderr


def test_auto_resolves_to_the_best_present_device():
    resolution = DeviceSetup(DeviceParams()).resolve()
    assert resolution.kind == ("gpu" if gpu_present() else "cpu")
    assert resolution.strategy in ("one_device", "mirrored") and resolution.precision == "float32"
    assert not resolution.jit_compile and not resolution.drop_remainder


MIRRORED_VS_ONE = """
import dataclasses, json, sys
import numpy as np
import tf_keras as keras
from pathlib import Path
from pipeline.device.params import DeviceParams
from pipeline.device.setup import DeviceSetup
from stages.train import TrainParams, TrainStage
from tests._tiny import context, digits

data, out = digits(), {}
for strategy in ("one_device", "mirrored"):
    device = DeviceSetup(DeviceParams(cpu_devices=2, strategy=strategy))
    ctx = dataclasses.replace(context(Path(sys.argv[1]) / strategy, "train", data=data), device=device)
    with device.scope():
        keras.utils.set_random_seed(0)  # the same initial weights for both
        artifact = TrainStage(TrainParams(epochs=2, batch_size=32)).run(None, ctx)
    model = artifact.load_keras()
    out[strategy] = {
        "replicas": device.strategy.num_replicas_in_sync,
        "weights": [w.tolist() for w in model.get_weights()],
        "accuracy": float(np.mean(np.argmax(model.predict(data.x_test, verbose=0), -1) == data.y_test)),
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_VS_ONE, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    one, mirrored = result["one_device"], result["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    # Same initial weights, same batches: only the order of float sums differs (Adam magnifies it on
    # near-zero gradients). A wrong gradient scale or split would move weights by ~1e-1.
    for a, b in zip(one["weights"], mirrored["weights"], strict=True):
        difference = np.abs(np.array(b) - np.array(a))
        assert difference.max() <= 1e-2 and difference.mean() <= 5e-4, (difference.max(), difference.mean())
    assert abs(one["accuracy"] - mirrored["accuracy"]) <= 0.02
    assert one["accuracy"] > 0.6


def test_mixed_precision_keeps_float32_outputs_and_converts_to_tflite(tmp_path):
    from stages.quantize import QuantizeParams, QuantizeStage
    from stages.train import TrainParams, TrainStage

    data = digits()
    device = DeviceSetup(DeviceParams(precision="mixed_float16"))
    base = context(tmp_path, "train", data=data)
    built = []

    def build():
        built.append(device.place_model(base.build_model()))
        return built[-1]

    ctx = dataclasses.replace(base, device=device, build_model=build)
    with device.scope():
        artifact = TrainStage(TrainParams(epochs=2)).run(None, ctx)
    trained = built[0]
    assert trained.layers[0].dtype_policy.name == "mixed_float16"
    assert trained.layers[-1].dtype_policy.name == "float32" and trained.output.dtype.name == "float32"
    stored = artifact.load_keras()  # artifacts are float32 throughout: the converter needs it
    assert {layer.dtype_policy.name for layer in stored.layers} == {"float32"}
    tflite = QuantizeStage(QuantizeParams(mode="none")).run(artifact, context(tmp_path, "quantize", 1, data=data))
    assert accuracy(tflite, data) > 0.6
    assert abs(accuracy(tflite, data) - accuracy(artifact, data)) <= 0.02


@pytest.mark.slow
def test_xla_path_compiles_training_with_fixed_batches(tmp_path):
    from stages.train import TrainParams, TrainStage
    from techniques.training import steps_per_epoch

    device = DeviceSetup(DeviceParams(jit_compile=True))
    ctx = dataclasses.replace(context(tmp_path, "train"), device=device)
    params = TrainParams(epochs=2, batch_size=100)
    assert device.resolve().jit_compile and device.resolve().drop_remainder  # auto: fixed shapes for XLA
    assert steps_per_epoch(ctx.data, ctx.device, params) == len(ctx.data.x_train) // 100
    batches = list(device.dataset(ctx.data.x_train, ctx.data.y_train, 100, seed=0))
    assert {len(x) for x, _ in batches} == {100}
    with device.scope():
        artifact = TrainStage(params).run(None, ctx)
    assert accuracy(artifact, ctx.data) > 0.3  # two short epochs: trained, finite, and exported


def test_steps_per_epoch_caps_every_epoch(tmp_path):
    import logging

    import tf_keras as keras

    from techniques.training import FitParams, compile_model, fit, steps_per_epoch

    ctx = context(tmp_path, "train")
    device = DeviceSetup(DeviceParams())
    params = FitParams(epochs=3, batch_size=8, steps_per_epoch=5)
    assert steps_per_epoch(ctx.data, device, params) == 5
    assert steps_per_epoch(ctx.data, device, FitParams(batch_size=8, steps_per_epoch=10**6)) == device.steps(len(ctx.data.x_train), 8)
    model = ctx.build_model()
    compile_model(model, params)
    seen = []
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    history = fit(model, params, ctx.data, device, seed=0, log=logging.getLogger("test"), name="train", callbacks=[counter])
    # three epochs of five steps each: a finite input would have run out or started over
    assert len(history.history["loss"]) == 3 and seen == [0, 1, 2, 3, 4] * 3
    assert int(model.optimizer.iterations.numpy()) == 15


def test_per_replica_batch_size_scales_with_replicas():
    device = DeviceSetup(DeviceParams(batch_size="per_replica"))
    replicas = device.resolve().replicas
    assert device.global_batch(32) == 32 * replicas
    assert device.steps(100, 32) == -(-100 // (32 * replicas))


@pytest.mark.slow
def test_doctor_prints_versions_devices_and_the_auto_choice():
    done = subprocess.run([sys.executable, "-m", "pipeline.doctor"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    for package in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "mlflow"):
        assert f"\n  {package} " in done.stdout
    assert "CPU:0" in done.stdout
    expected = "gpu" if gpu_present() else "cpu"
    assert f"resolves to: device {expected} (" in done.stdout


def test_multi_worker_without_tf_config_says_how_to_start_workers(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(PipelineError) as raised:
        DeviceSetup(DeviceParams(strategy="multi_worker")).resolve()
    assert str(raised.value).startswith("device.strategy=multi_worker: TF_CONFIG is not set; start local workers with")


def trained_and_mixed_context(tmp_path, stage_name):
    """A float32 model trained one epoch, and a context for the next stage under mixed_float16."""
    from stages.train import TrainParams, TrainStage

    data = digits()
    trained = TrainStage(TrainParams(epochs=1)).run(None, context(tmp_path, "train", data=data))
    device = DeviceSetup(DeviceParams(precision="mixed_float16"))
    return trained, dataclasses.replace(context(tmp_path, stage_name, 1, data=data), device=device)


def test_tfmot_fine_tuning_under_mixed_precision_warns_and_trains_in_float32(tmp_path, caplog):
    from stages.prune import PruneParams, PruneStage

    trained, ctx = trained_and_mixed_context(tmp_path, "prune")
    with caplog.at_level("WARNING"), ctx.device.scope():
        pruned = PruneStage(PruneParams(epochs=1, final_sparsity=0.5)).run(trained, ctx)
    assert "prune: trains in float32; device.precision=mixed_float16 applies to newly built models" in caplog.text
    assert Effect.PRUNED in pruned.effects and {layer.dtype_policy.name for layer in pruned.load_keras().layers} == {"float32"}


def test_distillation_student_follows_mixed_precision(tmp_path, caplog):
    from stages.distill import DistillParams, DistillStage

    teacher, ctx = trained_and_mixed_context(tmp_path, "distill")
    with caplog.at_level("WARNING"), ctx.device.scope():
        student = DistillStage(DistillParams(epochs=1)).run(teacher, ctx)
    assert "trains in float32" not in caplog.text  # the student was built mixed, not left in float32
    assert {layer.dtype_policy.name for layer in student.load_keras().layers} == {"float32"}  # stored float32
