"""Accuracy budget benchmark: float fallback where full-integer int8 fails, and planned vs uniform sparsity.

    python benchmarks/accuracy_budget.py --mnist DIR [--outputs DIR] [--quick]

DIR holds MNIST-10k as IDX files (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); the
pipeline's `idx` source splits them (70% train, 10% validation, 20% test). Everything runs
through the pipeline's runner, so the numbers are those `python -m pipeline` prints; every choice
(float layers, the sparsity plan) is made on the validation split and the test split is measured
once per shipped model.

1. Float fallback. The model standardises every pixel inside it (a Keras `Normalization` layer,
   axis=(1, 2, 3), adapted on the training images), then a small CNN. In full-integer int8 the
   layer becomes a MUL by 784 per-pixel reciprocal deviations stored with one int8 scale. The
   border pixels that are 0 in every training image have zero variance, which the layer turns
   into a multiplier of 1/epsilon = 10^7; with one scale of 10^7/127 every informative pixel's
   multiplier (median 7) rounds to zero. Side by side: the float Keras model, float TFLite, plain
   int8, and int8 with `fallback: auto` under `budget.accuracy_drop: 0.01`, with test accuracy,
   size and latency. Targets: plain int8 loses at least 2 points; the fallback model is within
   the budget (validation) at no more than 1.5x the plain int8 size. Beside it, int4 weights with
   the precision ladder (int8 weights, int16 activations, float) under the same budget: within the
   budget at a smaller file than the float fallback's.
2. Per-layer sparsity. The small CNN pruned to the same overall sparsity three ways, each
   fine-tuned the same way: uniformly (every layer alike), by the usual hand rule (first and last
   layer dense, the rest even) and by the sensitivity plan; test accuracy of each, at several
   sparsities. Target: the plan is at least as accurate as uniform pruning at every sparsity.

It prints both tables and writes them with a plot to the outputs folder (accuracy_budget.md,
sparsity_plan_vs_uniform.png).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compression import markdown, publish  # noqa: E402

SEED = 42
TRAIN = {"epochs": 12, "batch_size": 64, "learning_rate": 0.001, "lr_decay": "cosine"}
PRUNE = {"epochs": 10, "batch_size": 64, "learning_rate": 0.0005, "lr_decay": "cosine", "ramp_fraction": 0.5}
SPARSITIES = (0.9, 0.95, 0.97)
MEASURED = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99]  # what the sensitivity stage tries per layer
BUDGET = 0.01
QUICK = {"epochs": 1}


def run_stages(name: str, stages: dict, overrides: list[str], outputs: Path, quick: bool) -> dict[str, dict[str, float]]:
    """Run `stages` through the pipeline; each stage's measured metrics (and facts) by stage name."""
    from hydra import compose, initialize_config_module

    from pipeline.run.runner import RunInfo, run

    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=[f"outputs={outputs}", f"seed={SEED}", *overrides])
    cfg.stages = {stage: {**params, **(QUICK if quick and "epochs" in params else {})} for stage, params in stages.items()}
    cfg.description = f"accuracy budget benchmark: {name}"
    started = time.perf_counter()
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / name, recipe=f"benchmark_{name}"))
    accuracies = ", ".join(f"{r.stage} {r.metrics['accuracy']:.4f}" for r in result.rows)
    print(f"  {name}: {time.perf_counter() - started:.0f} s, {accuracies}", flush=True)
    measured = {row.stage: dict(row.metrics) for row in result.rows}
    for artifact in result.artifact.lineage():  # the facts a stage recorded (float layers, per-layer targets)
        measured.setdefault(artifact.stage, {}).update({"facts": artifact.metadata})
    return measured


def standardizing_model(mnist: Path, folder: Path) -> Path:
    """The per-pixel standardising CNN, untrained, saved where `model=file` can load it."""
    import tf_keras as keras

    from pipeline.config.recipe import configure
    from pipeline.plugin import registry

    data = configure(registry.DATA, {"name": "idx", "path": str(mnist)}, "data").load(seed=SEED)
    keras.utils.set_random_seed(SEED)  # the same initial weights every run
    layers = keras.layers
    normalization = layers.Normalization(axis=(1, 2, 3), name="standardize")
    normalization.adapt(data.x_train)  # statistics of the training split only
    inputs = keras.Input(data.input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(normalization(inputs))
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.Flatten(name="flatten")(layers.MaxPooling2D(name="pool")(x))
    x = layers.Dense(64, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, layers.Dense(data.num_classes, name="logits")(x), name="standardizing_cnn")
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "standardizing_cnn.keras")
    return folder / "standardizing_cnn.keras"


# Quantize settings of the precision ladder's row.
MIXED_FALLBACK = {"mode": "int8", "weights": "int4", "fallback": "auto", "fallback_steps": ["int8", "int16", "float"]}


def fallback_part(mnist: Path, outputs: Path, quick: bool) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """Float, plain int8 and int8 with fallback of the standardising model: the table and the targets."""
    model = standardizing_model(mnist, outputs / "model")
    data = ["data=idx", f"data.path={mnist}", "model=file", f"model.path={model}"]
    train = {"train": TRAIN}
    float_run = run_stages("float", {**train, "quantize": {"mode": "none"}}, data, outputs, quick)
    # Plain int8 is at chance here, which is the point: the safety net would refuse to ship it.
    int8_run = run_stages("int8", {**train, "quantize": {"mode": "int8"}}, [*data, "budget.safety_net=null"], outputs, quick)
    fallback = run_stages("int8_fallback", {**train, "quantize": {"mode": "int8", "fallback": "auto"}},
                          [*data, f"budget.accuracy_drop={BUDGET}"], outputs, quick)
    # The same budget with the precision ladder: int4 weights to start, int8 weights, int16 activations, float.
    ladder = run_stages("int4_fallback", {**train, "quantize": MIXED_FALLBACK}, [*data, f"budget.accuracy_drop={BUDGET}"], outputs, quick)
    keras, tflite, int8, mixed = float_run["train"], float_run["quantize"], int8_run["quantize"], fallback["quantize"]
    precise = ladder["quantize"]
    rows = [
        (label, f"{x['accuracy']:.4f}", f"{x['val_accuracy']:.4f}" if "val_accuracy" in x else "-",
         f"{x['size_bytes'] / 1024:.1f}", f"{x['size_bytes'] / int8['size_bytes']:.2f}x", f"{x['latency_p50_ms']:.3f}", floats)
        for label, x, floats in [
            ("float32 Keras", keras, "all"), ("float32 TFLite", tflite, "all"), ("int8, full integer", int8, "none"),
            (f"int8 + fallback (budget {BUDGET:.0%})", mixed, ", ".join(mixed["facts"].get("float_layers", [])) or "none"),
            (f"int4 weights + precision fallback (budget {BUDGET:.0%})", precise,
             ", ".join(precise["facts"].get("fallback", {}).get("float_layers", [])) or "none"),
        ]
    ]
    table = markdown(("model", "test accuracy", "val accuracy", "size KiB", "size / int8", "p50 ms", "float layers"), rows)
    lost, size_ratio = keras["accuracy"] - int8["accuracy"], mixed["size_bytes"] / int8["size_bytes"]
    reference = fallback["train"]["val_accuracy"]
    targets = [
        ("plain int8 test accuracy lost vs float Keras", f"{100 * lost:.2f} pt", ">= 2 pt", lost >= 0.02),
        ("fallback validation accuracy vs float (the budget)", f"{100 * (mixed['val_accuracy'] - reference):+.2f} pt",
         f">= -{100 * BUDGET:.0f} pt", mixed["val_accuracy"] >= reference - BUDGET - 1e-9),
        ("fallback size / plain int8 size", f"{size_ratio:.2f}x", "<= 1.5x", size_ratio <= 1.5),
        ("precision fallback validation accuracy vs float (the budget)",
         f"{100 * (precise['val_accuracy'] - reference):+.2f} pt", f">= -{100 * BUDGET:.0f} pt",
         precise["val_accuracy"] >= reference - BUDGET - 1e-9),
        ("precision fallback size / float fallback size", f"{precise['size_bytes'] / mixed['size_bytes']:.2f}x", "< 1x",
         precise["size_bytes"] < mixed["size_bytes"]),
    ]
    return table + "\n\n" + search_table(fallback) + "\n\n" + ladder_table(ladder), targets


def search_table(fallback: dict) -> str:
    """What the fallback search tried, as the quantize stage wrote it."""
    search = fallback["quantize"]["facts"].get("fallback", {})
    steps = search.get("steps", [])
    lines = [f"Fallback search (floor {search.get('floor', float('nan')):.4f} validation accuracy; plain int8 "
             f"{search.get('int8_val_accuracy', float('nan')):.4f} at {search.get('int8_size_bytes', 0) / 1024:.1f} KiB):"]
    lines += [f"- {step['layer']} float (int8 error {step['error']:.3g}): validation accuracy {step['val_accuracy']:.4f}, "
              f"{step['size_bytes'] / 1024:.1f} KiB" for step in steps]
    return "\n".join(lines)


def ladder_table(ladder: dict) -> str:
    """What the precision ladder tried, and each layer's precision in the shipped file."""
    facts = ladder["quantize"]["facts"]
    search = facts.get("fallback", {})
    lines = [f"Precision fallback search (floor {search.get('floor', float('nan')):.4f}; int4 weights everywhere "
             f"{search.get('start_val_accuracy', float('nan')):.4f} at {search.get('start_size_bytes', 0) / 1024:.1f} KiB):"]
    lines += [f"- {t['layer']} -> {t['step']} (error alone {t['error']:.3g}): "
              + ("refused (latency)" if t["refused"] else f"validation accuracy {t['val_accuracy']:.4f}")
              + f", {t['size_bytes'] / 1024:.1f} KiB, p50 {t['latency_ms']:.3f} ms" for t in search.get("trials", [])]
    shipped = ", ".join(f"{name} {words}" for name, words in facts.get("layer_precisions", {}).items())
    return "\n".join([*lines, f"Shipped: {shipped}"])


def sparsity_part(mnist: Path, outputs: Path, quick: bool) -> tuple[str, list[tuple[str, str, str, bool]], list[tuple[float, ...]]]:
    """Uniform, first-and-last-dense and planned sparsity at the same overall sparsity: table, targets, plot points."""
    data = ["data=idx", f"data.path={mnist}"]
    rows, targets, points = [], [], []
    for sparsity in SPARSITIES:
        uniform = run_stages(f"uniform_{sparsity}", {"train": TRAIN, "prune": {**PRUNE, "final_sparsity": sparsity}}, data, outputs, quick)
        rule = first_and_last_dense(sparsity, list(uniform["prune"]["facts"]["layer_sparsity"]))
        by_rule = run_stages(f"rule_{sparsity}", {"train": TRAIN, "prune": {**PRUNE, "final_sparsity": rule}}, data, outputs, quick)
        planned = run_stages(
            f"planned_{sparsity}",
            {"train": TRAIN, "sensitivity": {"target_sparsity": sparsity, "sparsities": MEASURED, "int8_error": False},
             "prune": {**PRUNE, "final_sparsity": "plan"}},
            data, outputs, quick,
        )
        a, r, b = uniform["prune"], by_rule["prune"], planned["prune"]
        plan = ", ".join(f"{name} {share:.1%}" for name, share in b["facts"]["layer_sparsity"].items())
        rows.append((f"{sparsity:.0%}", f"{a['sparsity']:.1%} / {r['sparsity']:.1%} / {b['sparsity']:.1%}",
                     f"{a['accuracy']:.4f}", f"{r['accuracy']:.4f}", f"{b['accuracy']:.4f}",
                     f"{100 * (b['accuracy'] - a['accuracy']):+.2f}", plan))
        targets.append((f"planned - uniform test accuracy at {sparsity:.0%}", f"{100 * (b['accuracy'] - a['accuracy']):+.2f} pt",
                        ">= 0 pt", b["accuracy"] >= a["accuracy"]))
        points.append((sparsity, a["accuracy"], r["accuracy"], b["accuracy"]))
    header = ("target", "measured sparsity (uniform / rule / planned)", "uniform", "first+last dense", "planned",
              "planned - uniform pt", "plan")
    return f"Float small CNN: test accuracy {uniform['train']['accuracy']:.4f}.\n\n" + markdown(header, rows), targets, points


def first_and_last_dense(sparsity: float, names: list[str]) -> dict[str, float]:
    """The usual hand rule as a per-layer target: first and last layer dense, the rest pruned
    evenly to the same overall sparsity."""
    from pipeline.config.recipe import configure
    from pipeline.plugin import registry

    model = configure(registry.MODELS, {"name": "small_cnn"}, "model").build((28, 28, 1), 10)
    sizes = dict(zip(names, (layer.kernel.shape.num_elements() for layer in model.layers if hasattr(layer, "kernel"))))
    inner = sum(size for name, size in sizes.items() if name not in (names[0], names[-1]))
    return {"default": round(sparsity * sum(sizes.values()) / inner, 6), names[0]: 0.0, names[-1]: 0.0}


def plot(points: list[tuple[float, ...]], path: Path) -> Path:
    """Test accuracy against overall sparsity: uniform, the hand rule and planned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    sparsities = [100 * point[0] for point in points]
    labels = ("uniform: every layer the same", "first and last layer dense, the rest even", "planned: per layer from sensitivity")
    for column, (label, marker) in enumerate(zip(labels, "o^s"), 1):
        ax.plot(sparsities, [point[column] for point in points], marker=marker, label=label)
    ax.set_xlabel("overall sparsity (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Small CNN on MNIST-10k: planned vs uniform pruning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, required=True, help="folder of MNIST-10k IDX files")
    parser.add_argument("--outputs", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="one epoch per stage: checks the script, not the targets")
    parser.add_argument("--only", choices=("fallback", "sparsity"), default=None, help="run one part (default: both)")
    args = parser.parse_args()
    outputs = (args.outputs or Path(tempfile.mkdtemp(prefix="accuracy-budget-"))).resolve()
    print(f"MNIST-10k from {args.mnist}; outputs in {outputs}", flush=True)
    started = time.perf_counter()
    parts, checks, points = [], [], []
    if args.only in (None, "fallback"):
        fallback_table, fallback_targets = fallback_part(args.mnist.resolve(), outputs, args.quick)
        parts += ["Fallback (per-pixel standardising CNN):", fallback_table]
        checks += fallback_targets
    if args.only in (None, "sparsity"):
        sparsity_table, sparsity_targets, points = sparsity_part(args.mnist.resolve(), outputs, args.quick)
        parts += ["Per-layer sparsity from the sensitivity plan vs uniform, same overall sparsity:", sparsity_table]
        checks += sparsity_targets
    heading = (f"Accuracy budget on MNIST-10k (seed {SEED}), {time.perf_counter() - started:.0f} s in all; p50 latency at "
               "batch 1, LiteRT on one thread for TFLite, a traced Keras call for Keras.")
    draw = lambda: plot(points, outputs / "sparsity_plan_vs_uniform.png")  # noqa: E731
    return publish([heading, *parts], checks, outputs / "accuracy_budget.md", draw)

if __name__ == "__main__":
    sys.exit(main())
