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
