"""Tiny text data sets written by the tests: a folder of .txt files per class, and a CSV text column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# Each class has its own topic words; every text mixes them with words common to all classes.
TOPICS = {
    "business": ["market", "shares", "profit", "bank", "economy", "growth", "firm", "sales"],
    "sport": ["match", "goal", "team", "coach", "season", "cup", "player", "win"],
    "tech": ["software", "phone", "internet", "chip", "users", "digital", "computer", "network"],
}
COMMON = ["the", "a", "said", "on", "in", "year", "new", "people", "it", "was", "for", "and"]


def texts(per_class: int = 40, seed: int = 0, long_every: int = 5) -> list[tuple[str, str]]:
    """(class, text) pairs: topic words among common ones, Capitalised and punctuated; every
    `long_every`-th text is long (60+ words) so that a short sequence length truncates it."""
    rng = np.random.default_rng(seed)
    found = []
    for name, words in TOPICS.items():
        for i in range(per_class):
            count = 60 + int(rng.integers(0, 20)) if i % long_every == 0 else int(rng.integers(8, 16))
            picked = [str(rng.choice(words)) if rng.random() < 0.4 else str(rng.choice(COMMON)) for _ in range(count)]
            found.append((name, picked[0].capitalize() + " " + " ".join(picked[1:]) + "."))
    return found


def write_text_folder(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """`root` holding one folder of .txt files per class; its path."""
    for i, (name, text) in enumerate(texts(per_class, seed)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return root


def write_text_csv(path: Path, per_class: int = 40, seed: int = 0) -> Path:
    """A CSV file with columns id, review (the text) and sentiment (the class); its path."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        for i, (name, text) in enumerate(texts(per_class, seed)):
            writer.writerow([i, text, name])
    return path
