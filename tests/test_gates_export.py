"""Ship gates (accuracy tolerance, full integer) and the metadata JSON written beside exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.measure.metrics import validation_accuracy
from stages.export import ExportParams, ExportStage
from stages.prune import PruneParams, PruneStage
from stages.quantize import QuantizeParams, QuantizeStage
from techniques.gates import float_operators, integer_gate
from tests._tiny import accuracy, context


def test_accuracy_gate_passes_and_records_both_validation_accuracies(tmp_path, trained):
    out = QuantizeStage(QuantizeParams(mode="int8", accuracy_tolerance=0.05)).run(trained, context(tmp_path, "quantize", 1))
    gate = out.gate
    data = context(tmp_path, "x").data
    assert out.metadata["gate_split"] == "validation"  # a gate decides; decisions never look at the test split
    assert gate["tflite_accuracy"] == pytest.approx(validation_accuracy(out, data))
    assert gate["keras_accuracy"] == pytest.approx(validation_accuracy(trained, data))
    assert gate["tflite_accuracy"] >= gate["keras_accuracy"] - 0.05


def test_accuracy_gate_fails_on_an_impossible_tolerance(tmp_path, trained):
    with pytest.raises(PipelineError, match=r"^stages.quantize.accuracy_tolerance: TFLite validation accuracy .* allowed -0.2;"):
        QuantizeStage(QuantizeParams(mode="dynamic", accuracy_tolerance=-0.2)).run(trained, context(tmp_path, "quantize", 1))


@pytest.mark.parametrize("mode, advice", [
    ("int8", "use quantization-aware training (a qat stage), set stages.quantize.fallback=auto "
             "or raise stages.quantize.accuracy_tolerance"),
    ("dynamic", "raise stages.quantize.accuracy_tolerance"),  # qat and the fallback make int8 models only
])
def test_accuracy_gate_advice_fits_the_mode(tmp_path, trained, mode, advice):
    with pytest.raises(PipelineError) as raised:
        QuantizeStage(QuantizeParams(mode=mode, accuracy_tolerance=-0.2)).run(trained, context(tmp_path, "quantize", 1))
    assert str(raised.value).endswith(f"allowed -0.2; {advice}")


def test_int8_output_is_checked_fully_integer(tmp_path, trained):
    out = QuantizeStage(QuantizeParams(mode="int8")).run(trained, context(tmp_path, "quantize", 1))
    assert out.metadata["fully_integer"] is True and float_operators(out.path) == []


def test_integer_gate_names_float_ops_and_io(tmp_path, trained):
    out = QuantizeStage(QuantizeParams(mode="float16")).run(trained, context(tmp_path, "quantize", 1))
    assert "fully_integer" not in out.metadata
    assert "FULLY_CONNECTED" in float_operators(out.path)
    with pytest.raises(PipelineError, match=r"not fully integer \(input is float32; output is float32; float operators .*CONV_2D"):
        integer_gate(out.path, "stages.quantize")


def test_require_integer_needs_int8():
    with pytest.raises(ValueError, match="require_integer=true needs mode=int8"):
        QuantizeParams(mode="dynamic", require_integer="true")


def test_metadata_json_describes_the_shipped_model(tmp_path, trained):
    pruned = PruneStage(PruneParams(final_sparsity=0.5, epochs=1)).run(trained, context(tmp_path, "prune", 1))
    tflite = QuantizeStage(QuantizeParams(mode="int8")).run(pruned, context(tmp_path, "quantize", 2))
    out = ExportStage(ExportParams(formats=["tflite", "keras"], name="digits")).run(tflite, context(tmp_path, "export", 3))
    assert out.exports[-1] == tmp_path / "export" / "digits.json"
    meta = json.loads((tmp_path / "export" / "digits.json").read_text())
    assert meta["files"] == {"tflite": "digits.tflite", "keras": "digits.keras"}
    assert meta["quantization"]["quantization"] == "int8" and meta["quantization"]["fully_integer"] is True
    (source,), (target,) = meta["io"]["inputs"], meta["io"]["outputs"]
    assert source["dtype"] == "int8" and source["shape"] == [1, 8, 8, 1] and source["scale"] > 0
    assert target["dtype"] == "int8" and target["shape"] == [1, 10]
    assert [step["stage"] for step in meta["lineage"]] == ["train", "prune", "quantize"]
    assert meta["lineage"][1]["facts"]["target_sparsity"] == 0.5
    assert meta["lineage"][2]["effects"] == ["pruned"]
    assert meta["metrics"]["accuracy"] == pytest.approx(accuracy(tflite, context(tmp_path, "x").data))
    assert meta["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert np.isclose(meta["metrics"]["size_bytes"], (tmp_path / "export" / "digits.tflite").stat().st_size)


def test_metadata_json_can_be_turned_off(tmp_path, trained):
    ExportStage(ExportParams(formats=["keras"], metadata=False)).run(trained, context(tmp_path, "export", 1))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["model.keras"]
