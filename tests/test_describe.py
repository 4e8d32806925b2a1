"""`python -m pipeline.describe` documents every plugin from its schema."""

from __future__ import annotations

from pipeline.commands.describe import main
from pipeline.plugin import registry


def test_every_plugin_is_described_with_its_parameters(capsys):
    main([])
    out = capsys.readouterr().out
    for group in (registry.STAGES, registry.DATA, registry.MODELS):
        for name in registry.available(group):
            assert f"{registry.KINDS[group]} {name}:" in out
    prune = out[out.index("stage prune:"):].split("\n\n")[0]
    assert "final_sparsity" in prune and "0.5" in prune and "Share of each pruned layer's weights" in prune
    assert "polynomial|constant" in prune


def test_only_the_named_plugins(capsys):
    main(["quantize"])
    out = capsys.readouterr().out
    assert out.startswith("stage quantize:") and "stage prune" not in out
    assert "none|dynamic|float16|int8|int16x8" in out


def test_constrained_and_nested_types_read_as_written(capsys):
    main(["channel_prune", "export", "distill"])
    out = capsys.readouterr().out
    assert "dict[str, float]" in out  # channel_prune.shares: float values constrained to [0, 1)
    assert "list[tflite|keras|h5|saved_model|keras3]" in out  # export.formats
    assert "str | None" in out and "dict[str, Any] | incoming" in out  # distill.teacher, distill.student
    assert "Annotated" not in out and "FieldInfo" not in out and "Literal" not in out


def test_a_stage_parameter_called_name_is_listed(capsys):
    main(["export", "digits"])
    out = capsys.readouterr().out
    export, digits = out.split("\n\n")[:2]
    assert any(line.split()[0] == "name" for line in export.splitlines()[1:])  # the exported files' base name
    assert all(line.split()[0] != "name" for line in digits.splitlines()[1:])  # data=digits picks the source
