"""Recipes generated from the registered stage kinds: every ordered chain of them, ending in export.

Each stage kind contributes its parameter variants: every value of the field that picks what the
stage does (quantize's `mode`, qat's `scheme`, read from the stage's own schema, so a new mode is
covered without editing this file), the variants listed in `VARIANTS`, or its defaults. A kind
registered later (a new stage plugin) joins with its defaults. Whether a chain can work is left to
`check_recipe`, that is to the stages' own declarations.
"""

from __future__ import annotations

import itertools
import json
import random
import typing
from dataclasses import dataclass

from pipeline.plugin import registry

# The field whose every value is a chain variant, by stage kind.
ENUMERATED = {"quantize": "mode", "qat": "scheme"}
# Variants of kinds whose choice is more than one field.
VARIANTS: dict[str, list[dict]] = {
    "prune": [{}, {"m_by_n": [2, 4]}, {"final_sparsity": "plan"}],  # plan: a sensitivity stage's
    "export": [{}, {"formats": ["keras"]}],  # the default ships TFLite, which only some chains make
}
FINAL = "export"
# Keeps each stage to a second or two on digits; applied where the stage has such a field.
TINY = {"epochs": 1, "calibration_samples": 16, "student": {"name": "small_cnn", "width": 0.5}}


@dataclass(frozen=True)
class Chain:
    """An ordered list of (stage kind, parameters); its recipe `stages` mapping and a readable name."""

    steps: tuple[tuple[str, str], ...]  # (kind, its parameters as sorted JSON): hashable, comparable

    @property
    def stages(self) -> dict[str, dict]:
        """The recipe's `stages` mapping: each kind once, keyed by its name, with tiny settings."""
        return {kind: {**tiny(kind), **json.loads(params)} for kind, params in self.steps}

    @property
    def name(self) -> str:
        """`train -> prune(m_by_n=[2, 4]) -> export`."""
        def step(kind: str, params: str) -> str:
            shown = ", ".join(f"{k}={v}" for k, v in json.loads(params).items())
            return f"{kind}({shown})" if shown else kind

        return " -> ".join(step(kind, params) for kind, params in self.steps)


def tiny(kind: str) -> dict:
    """The TINY settings that the stage kind's schema has."""
    fields = registry.load(registry.STAGES, kind, kind).Config.model_fields
    return {key: value for key, value in TINY.items() if key in fields}


def variants(kind: str) -> list[dict]:
    """Parameter sets of one stage kind, as described in the module docstring."""
    if kind in ENUMERATED:
        field = ENUMERATED[kind]
        annotation = registry.load(registry.STAGES, kind, kind).Config.model_fields[field].annotation
        return [{field: value} for value in typing.get_args(annotation)]
    return VARIANTS.get(kind, [{}])


def chains(max_length: int = 5) -> list[Chain]:
    """Every chain of distinct stage kinds in any order, up to `max_length` stages including the final export."""
    body = sorted(kind for kind in registry.available(registry.STAGES) if kind != FINAL)
    found = []
    for length in range(1, max_length):
        for kinds in itertools.permutations(body, length):
            for chosen in itertools.product(*(variants(kind) for kind in (*kinds, FINAL))):
                found.append(Chain(tuple(zip((*kinds, FINAL), (json.dumps(p, sort_keys=True) for p in chosen)))))
    return found


def sample(found: list[Chain], count: int, seed: int = 0) -> list[Chain]:
    """A seeded random sample of `count` chains (all of them when there are fewer)."""
    return found if len(found) <= count else random.Random(seed).sample(found, count)
