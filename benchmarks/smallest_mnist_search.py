"""The validation-split search behind recipes/recipe/smallest_mnist.yaml.

    python benchmarks/smallest_mnist_search.py --mnist DIR [--outputs DIR]

Runs the recipe on the compression benchmark's MNIST split with other pruning and clustering
settings and prints, for each candidate, the shipped TFLite file's gzip size and its accuracy on
the VALIDATION split next to the teacher's. The validation split holds 800 images, so a
candidate's accuracy there is uncertain by about 0.65 point (one standard error at 96.5%): the
recipe ships the smallest candidate within MARGIN (half of the one-point budget) of the teacher
there. The test split is not looked at (benchmarks/compression.py reports it once, for the recipe
as shipped). The teacher and the student train once (stage cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression import markdown, split_folder  # noqa: E402  (benchmarks/ is the script's folder)

from pipeline.errors import PipelineError  # noqa: E402

MARGIN = 0.005
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "recipe"
RECIPE = RECIPES / "smallest_mnist.yaml"


def post_training_int4(recipe: Path) -> dict:
    """`recipe` with post-training int8 and int4 weights in place of its qat stage, the budget's fallback
    widening a layer's weights to int8 (or keeping it float) only where the validation split needs it."""
    config = yaml.safe_load(recipe.read_text())
    stages = {name: params for name, params in config["stages"].items() if name not in ("qat", "export")}
    stages["quantize"] = {"mode": "int8", "weights": "int4", "calibration_samples": 500, "fallback": "auto",
                          "fallback_steps": ["int8", "float"]}
    return {"budget": {"accuracy_drop": 0.01}, "stages": {**stages, "export": config["stages"]["export"]}}


INT4 = post_training_int4(RECIPE)
# A student narrower than the recipe's: its dense layer, almost all of the weights, shrinks with the width squared.
NARROW = {"student": {"name": "small_cnn", "width": 0.35}}
# (label, changes to the recipe's stages[, recipe]): the knobs the recipes' comments say were chosen here.
CANDIDATES = [
    ("every layer 80%, 8 clusters", {"prune": {"final_sparsity": 0.8, "layers": []}, "cluster": {"number_of_clusters": 8}}),
    ("dense 80%, 16 clusters", {"prune": {"final_sparsity": 0.8}}),
    ("dense 85%, 16 clusters", {"prune": {"final_sparsity": 0.85}}),
    ("dense 90%, 16 clusters", {"prune": {"final_sparsity": 0.9}}),
    ("dense 85%, 8 clusters", {"prune": {"final_sparsity": 0.85}, "cluster": {"number_of_clusters": 8}}),
    ("dense 70%, 16 clusters", {"prune": {"final_sparsity": 0.7}}),
    ("dense 80%, 16 clusters, teacher in pruning", {"prune": {"final_sparsity": 0.8, "teacher_alpha": 0.9}}),
    ("dense 85%, 16 clusters, teacher in pruning", {"prune": {"final_sparsity": 0.85, "teacher_alpha": 0.9}}),
    ("dense 90%, 16 clusters, teacher in pruning", {"prune": {"final_sparsity": 0.9, "teacher_alpha": 0.9}}),
    ("dense 95%, 16 clusters, teacher in pruning", {"prune": {"final_sparsity": 0.95, "teacher_alpha": 0.9}}),
    # Post-training int4 weights (the first smallest_mnist_int4) and the way past 100x: a narrower student.
    ("int4 weights, dense 80%, 16 clusters", {}, INT4),
    ("int4 weights, student 0.35, dense 80%, 16 clusters", {"distill": NARROW}, INT4),
    ("student 0.35, dense 80%, 16 clusters", {"distill": NARROW}),
    # int4 with a sparser dense layer (zeros pack into zero bytes that gzip removes), and the narrow student pruned less.
    ("int4 weights, dense 90%, 16 clusters", {"prune": {"final_sparsity": 0.9}}, INT4),
    ("int4 weights, student 0.35, dense 70%, 16 clusters", {"distill": NARROW, "prune": {"final_sparsity": 0.7}}, INT4),
    # Post-training int4 costs the 0.35 student most of its budget: the narrow student at 70-75% with PCQAT int8.
    ("student 0.35, dense 70%, 16 clusters", {"distill": NARROW, "prune": {"final_sparsity": 0.7}}),
    ("student 0.35, dense 70%, 8 clusters", {"distill": NARROW, "prune": {"final_sparsity": 0.7}, "cluster": {"number_of_clusters": 8}}),
    ("student 0.35, dense 75%, 16 clusters", {"distill": NARROW, "prune": {"final_sparsity": 0.75}}),
    ("student 0.35, dense 70%, 12 clusters", {"distill": NARROW, "prune": {"final_sparsity": 0.7}, "cluster": {"number_of_clusters": 12}}),
    ("student 0.35, dense 72%, 12 clusters", {"distill": NARROW, "prune": {"final_sparsity": 0.72}, "cluster": {"number_of_clusters": 12}}),
    # int4 quantization-aware training (pqat: the zeros kept), without clustering (its quantizer is 8-bit only):
    # the dense layers, 99% of the weights, on the int4 grid; the convolutions int8, or int4 too.
    ("int4 QAT dense, student 0.35, dense 70%", {"distill": NARROW, "prune": {"final_sparsity": 0.7}, "cluster": None,
                                                 "qat": {"weights": {"default": "int8", "Dense": "int4"}}}),
    ("int4 QAT dense, student 0.35, dense 75%", {"distill": NARROW, "prune": {"final_sparsity": 0.75}, "cluster": None,
                                                 "qat": {"weights": {"default": "int8", "Dense": "int4"}}}),
    ("int4 QAT all, student 0.35, dense 70%", {"distill": NARROW, "prune": {"final_sparsity": 0.7}, "cluster": None,
                                               "qat": {"weights": "int4"}}),
    ("int4 QAT dense, dense 80%", {"cluster": None, "qat": {"weights": {"default": "int8", "Dense": "int4"}}}),
]


def recipe_stages(changes: dict, recipe: Path | dict = RECIPE) -> tuple[dict, list[str]]:
    """The recipe's stages (a file, or its loaded config) with `changes` merged into each stage's
    parameters (a stage changed to None is left out), and its budget as overrides."""
    config = yaml.safe_load(recipe.read_text()) if isinstance(recipe, Path) else recipe
    budget = [f"budget.{key}={value}" for key, value in config.get("budget", {}).items()]
    stages = {name: {**params, **changes.get(name, {})} for name, params in config["stages"].items()
              if name not in changes or changes[name] is not None}
    return stages, budget


def run_candidate(label: str, changes: dict, data_dir: Path, outputs: Path, seed: int, recipe: Path | dict = RECIPE) -> dict:
    """Run `recipe` with `changes`; gzip sizes and validation accuracies of teacher, student and shipped file."""
    from hydra import compose, initialize_config_module

    from pipeline.config.recipe import check_recipe
    from pipeline.plugin.artifact import ModelFormat
    from pipeline.run.runner import RunInfo, execute

    overrides = [f"outputs={outputs}", "data=idx", f"data.path={data_dir}", "data.val_fraction=0.1",
                 f"seed={seed}", "++model.dropout=0.5", "measure.latency_runs=5"]
    stages, budget = recipe_stages(changes, recipe)
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=overrides + budget)
    cfg.stages = stages
    plan = check_recipe(cfg)
    started = time.perf_counter()
    result = execute(plan, RunInfo(run_dir=outputs / "runs" / label.replace(" ", "_").replace(",", ""), recipe="smallest_mnist_search"))
    metrics = {row.stage: row.metrics for row in result.rows}
    shipped = result.artifact.nearest(ModelFormat.TFLITE)
    assert shipped is not None  # every candidate ends in a TFLite file
    # The runner's own validation accuracy of each stage's model (the TFLite file as LiteRT runs it).
    found = {
        "teacher_val": metrics["train"]["val_accuracy"], "student_val": metrics["distill"]["val_accuracy"],
        "pruned_val": metrics["prune"]["val_accuracy"], "shipped_val": metrics[shipped.stage]["val_accuracy"],
        "teacher_gzip": metrics["train"]["gzip_bytes"], "shipped_gzip": metrics[shipped.stage]["gzip_bytes"],
    }
    print(f"  {label}: {time.perf_counter() - started:.0f} s, " + ", ".join(f"{k} {v:.4g}" for k, v in found.items()), flush=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist10k")
    parser.add_argument("--outputs", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", nargs="*", type=int, default=None, help="candidate numbers to run (default: all)")
    args = parser.parse_args()
    outputs = (args.outputs or Path(tempfile.mkdtemp(prefix="smallest-mnist-"))).resolve()
    data_dir = split_folder(args.mnist, outputs / "data")
    chosen = [c for i, c in enumerate(CANDIDATES) if args.only is None or i in args.only]
    found, failed = {}, {}
    for label, changes, *recipe in chosen:
        try:
            found[label] = run_candidate(label, changes, data_dir, outputs, args.seed, *recipe)
        except PipelineError as error:  # a budget's fallback that finds no file within the budget
            print(f"  {label}: {error}", flush=True)
            failed[label] = str(error)
    rows = []
    for label, x in found.items():
        drop = 100 * (x["teacher_val"] - x["shipped_val"])
        rows.append((label, f"{x['shipped_gzip'] / 1024:.1f}", f"{x['teacher_gzip'] / x['shipped_gzip']:.0f}x",
                     f"{x['student_val']:.4f}", f"{x['pruned_val']:.4f}", f"{x['shipped_val']:.4f}",
                     f"{x['teacher_val']:.4f}", f"{-drop:+.2f}", "yes" if drop <= 100 * MARGIN + 1e-7 else "no"))
    header = ("candidate", "gzip KiB", "vs teacher", "student val", "pruned val", "shipped val", "teacher val",
              "vs teacher pt", "within margin")
    print("\nValidation split (the test split is not used here):\n\n" + markdown(header, rows))
    for label, error in failed.items():
        print(f"- {label}: no file (the run stopped: {error})")
    eligible = [label for label, x in found.items() if x["teacher_val"] - x["shipped_val"] <= MARGIN + 1e-9]
    if eligible:
        print(f"\nsmallest within {100 * MARGIN:.1f} point of the teacher on validation: "
              f"{min(eligible, key=lambda k: found[k]['shipped_gzip'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
