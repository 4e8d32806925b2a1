"""A user's nested transfer-learning model beside the same model built flat, through mobile_int8 and qat_int8.

    python benchmarks/user_models.py --data /work/shared/data/mnist10k [--train-epochs 40] [--no-augment] [--quick]

The model is `tests._user_models:transfer`, built as Keras' transfer-learning guide builds it: a
Resizing to 32x32, an augmentation block (small shifts, turns and zooms; `--no-augment` leaves
it out), a `keras.applications.MobileNetV2` base (alpha 0.35, `weights=None`: trained from
scratch, no download) called as a layer, pooling, dropout and a new Dense head. It runs twice on
MNIST-10k through the pipeline's `idx` source and runner, so the numbers are those
`python -m pipeline` prints:

- nested: as the user builds it, the augmentation block and the base as models inside the model;
  the pipeline flattens it before any stage;
- flat: the same layers built as one graph (the base built on the tensor, as the built-in
  `mobilenet_v2` model is), which TFMOT handles without flattening.

Each runs mobile_int8 (train, 50% pruning, full-integer int8) and qat_int8 (train,
quantization-aware int8); the stage cache trains each model once. The script prints one table
of both side by side, then the targets: float test accuracy at least 0.95, the pruned layers'
sparsity within 0.02 of 50%, every int8 file fully integer, QAT int8 within 1 point of the float
model. Timings are wall-clock on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ["PIPELINE_ALLOWED_MODULES"] = "tests"  # the model's builder lives in the test corpus
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("flat", "nested")
SPARSITY = 0.5


def model_settings(model: str, args: argparse.Namespace) -> list[str]:
    """The model group overrides of one variant."""
    kwargs = {"frozen_statistics": "false", "augment": str(args.augment).lower(), "nested": str(model == "nested").lower()}
    return ["model=custom", "model.target=tests._user_models:transfer", *(f"model.kwargs.{k}={v}" for k, v in kwargs.items())]


def settings(args: argparse.Namespace) -> list[str]:
    """Stage settings shared by both models and recipes (the same train stage, so the cache trains once)."""
    fit = ["batch_size=64", "lr_decay=cosine"]
    return [
        *(f"stages.train.{s}" for s in fit), f"stages.train.epochs={args.train_epochs}",
        *(f"stages.prune.{s}" for s in fit), f"stages.prune.epochs={args.prune_epochs}", f"stages.prune.final_sparsity={SPARSITY}",
        "stages.qat.batch_size=64", f"stages.qat.epochs={args.qat_epochs}", "stages.qat.accuracy_tolerance=null",
        "measure.latency_runs=20", "measure.warmup_runs=3",
    ]


def run_recipe(model: str, recipe: str, args: argparse.Namespace, outputs: Path) -> dict:
    """One recipe on one model; each stage's measurements and facts by stage name."""
    from hydra import compose, initialize_config_module

    from pipeline.config.arguments import with_stage_prefix
    from pipeline.run.runner import RunInfo, run

    absent = "stages.qat." if recipe == "mobile_int8" else "stages.prune."  # a setting would add the stage
    stage_settings = [o for o in settings(args) if not o.startswith(absent)]
    overrides = [
        f"outputs={outputs}", f"recipe={recipe}", "data=idx", f"data.path={args.data}", *model_settings(model, args), *stage_settings
    ]
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=[with_stage_prefix(o) for o in overrides])
    started = time.perf_counter()
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / f"{model}_{recipe}", recipe=recipe))
    facts = {artifact.stage: {**artifact.metadata, **artifact.metrics} for artifact in result.artifact.lineage()}
    print(f"  {model} {recipe}: {time.perf_counter() - started:.0f} s", flush=True)
    return {row.stage: {**row.metrics, "seconds": row.seconds, "facts": facts.get(row.stage, {})} for row in result.rows}


def markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table."""
    from pipeline.run.summary import markdown as table

    return table(list(header), [list(row) for row in rows], right_aligned=set(range(2, len(header))))


def comparison(m: dict[str, dict[str, dict]]) -> str:
    """Both models' stages side by side: size, sparsity, accuracy against the float model, integer check."""
    rows = []
    for model in MODELS:
        mobile, qat = m[model]["mobile_int8"], m[model]["qat_int8"]
        float_accuracy = mobile["train"]["accuracy"]
        for label, x in (("float (train)", mobile["train"]), ("50% pruned", mobile["prune"]),
                         ("pruned + int8", mobile["quantize"]), ("QAT int8", qat["qat"])):
            facts = x["facts"]
            layers = facts.get("pruned_layers_sparsity") if label == "50% pruned" else None
            rows.append((
                model, label, f"{x['params']:,.0f}", f"{x['size_bytes'] / 1024:.0f}", f"{x['gzip_bytes'] / 1024:.0f}",
                f"{x['sparsity']:.1%}", f"{layers:.1%}" if layers is not None else "",
                f"{x['accuracy']:.4f}", f"{100 * (x['accuracy'] - float_accuracy):+.2f}",
                {True: "yes", None: ""}.get(facts.get("fully_integer") if "int8" in label else None, "no"),
                f"{x['latency_p50_ms']:.3f}", f"{x['seconds']:.0f}",
            ))
    header = ("model", "stage", "params", "size KiB", "gzip KiB", "sparsity", "pruned layers", "accuracy",
              "vs float pt", "fully integer", "p50 ms", "time s")
    return markdown(header, rows)


def targets(m: dict[str, dict[str, dict]]) -> list[tuple[str, str, str, str, bool]]:
    """(model, target, measured, threshold, passed) for the issue's four targets."""
    found = []
    for model in MODELS:
        mobile, qat = m[model]["mobile_int8"], m[model]["qat_int8"]
        keras, layers = mobile["train"]["accuracy"], mobile["prune"]["facts"]["pruned_layers_sparsity"]
        integer = [bool(mobile["quantize"]["facts"].get("fully_integer")), bool(qat["qat"]["facts"].get("fully_integer"))]
        drop = 100 * (keras - qat["qat"]["accuracy"])
        found += [
            (model, "float test accuracy", f"{keras:.4f}", ">= 0.95", keras >= 0.95),
            (model, "pruned layers' sparsity - target", f"{layers - SPARSITY:+.4f} ({layers:.1%})", "within 0.02",
             abs(layers - SPARSITY) <= 0.02),
            (model, "int8 files fully integer (PTQ, QAT)", ", ".join("yes" if i else "no" for i in integer), "both", all(integer)),
            (model, "QAT int8 accuracy drop vs float", f"{drop:+.2f} pt ({qat['qat']['accuracy']:.4f})", "<= 1 pt", drop <= 1.0),
        ]
    return found


def main() -> None:
    """Run both models through both recipes and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="folder of MNIST IDX files (t10k-images/labels)")
    # 15 epochs left validation accuracy at 0.930 and still rising; 40 reach 0.971 (BENCHMARKS.md).
    parser.add_argument("--train-epochs", type=int, default=40)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="the augmentation block")
    parser.add_argument("--prune-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one epoch per stage, to check the script")
    parser.add_argument("--outputs", type=Path, default=None, help="outputs folder (default: a new temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # the runner's progress lines
    if args.quick:
        args.train_epochs = args.prune_epochs = args.qat_epochs = 1
    outputs = args.outputs or Path(tempfile.mkdtemp(prefix="user_models_"))
    started = time.perf_counter()
    measured = {model: {recipe: run_recipe(model, recipe, args, outputs) for recipe in ("mobile_int8", "qat_int8")} for model in MODELS}
    print(f"\n{comparison(measured)}\n")
    rows = [(model, target, value, threshold, "PASS" if ok else "FAIL") for model, target, value, threshold, ok in targets(measured)]
    print(markdown(("model", "target", "measured", "threshold", "result"), rows))
    print(f"\n{time.perf_counter() - started:.0f} s in all; outputs in {outputs}")


if __name__ == "__main__":
    main()
