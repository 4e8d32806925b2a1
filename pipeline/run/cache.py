"""The stage cache: reuse a stage's output when nothing that determines it has changed.

An entry's key hashes the stage type, its resolved config, the key of the stage's input (so a
key names the whole prefix of the pipeline), the data fingerprint, the model config, the seed
and the package version. A sweep over a late stage's parameter therefore trains once.

Entries are folders `<root>/<key>/` holding the stage's output files and `entry.json`, which
records every file's size and SHA-256. Writes are atomic (a temporary folder renamed into
place), a per-key file lock makes parallel jobs wait for the one computing the entry, and an
entry whose files do not match its record is discarded and recomputed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pipeline
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat

log = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
# Folder of the stage cache holding decoded streamed examples (hidden: not a stage's entry).
DECODED = ".decoded"


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (order of keyword arguments does not matter)."""
    text = json.dumps({**parts, "version": pipeline.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def referenced_files(tree: Any) -> dict[str, Any]:
    """Size and hash of every existing file (or folder's files) a config names, by path.

    A teacher or model file named by path can be replaced in place; its contents, not its name,
    must decide whether cached outputs built from it still hold.
    """
    found: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found.update(referenced_files(item))
    elif isinstance(tree, str) and tree and os.path.exists(tree):
        path = Path(tree)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found[tree] = [entry_summary(f) for f in files]
    return found


@dataclass(frozen=True)
class Entry:
    """A stored stage output: its artifact description and the measurements taken of it."""

    key: str
    folder: Path
    record: dict[str, Any]


class StageCache:
    """Folder-backed store of stage outputs under `root`."""

    def __init__(self, root: Path):
        self.root = root

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the key's lock: one job computes an entry while others with the same key wait."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, key: str) -> Entry | None:
        """The entry for `key` if present and intact; a damaged one is removed."""
        folder = self.root / key
        if not folder.is_dir():
            return None
        try:
            record = json.loads((folder / ENTRY_FILE).read_text())
            damaged = [name for name, facts in record["files"].items() if not matches(folder / name, facts)]
        except (OSError, ValueError, KeyError, TypeError):
            damaged = [ENTRY_FILE]
        if damaged:
            log.warning("cache entry %s is damaged (%s); recomputing", key[:12], ", ".join(damaged[:3]))
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return Entry(key, folder, record)

    def put(
        self, key: str, stage_type: str, artifact: ModelArtifact, workdir: Path, measurements: Mapping[str, Any]
    ) -> Entry:
        """Store the files of `workdir` (which holds `artifact`) atomically under `key`."""
        staging = self.root / f".tmp-{uuid.uuid4().hex}"
        shutil.copytree(workdir, staging)
        files = {
            str(path.relative_to(staging)): entry_summary(path)
            for path in sorted(staging.rglob("*")) if path.is_file()
        }
        record = {
            "stage": stage_type,
            "format": artifact.format.value,
            "path": str(artifact.path.relative_to(workdir)),
            "metadata": artifact.metadata,
            "effects": sorted(effect.value for effect in artifact.effects),
            "metrics": artifact.metrics,
            "gate": artifact.gate,
            "reports": list(artifact.reports),
            "measurements": dict(measurements),
            "files": files,
            "created": time.time(),
        }
        (staging / ENTRY_FILE).write_text(json.dumps(record, indent=2, default=str))
        final = self.root / key
        try:
            os.rename(staging, final)
        except OSError:  # an identical entry appeared meanwhile (e.g. after a damaged one was removed)
            shutil.rmtree(staging, ignore_errors=True)
        return Entry(key, final, record)

    def restore(self, entry: Entry, workdir: Path, stage: str, parent: ModelArtifact | None) -> ModelArtifact:
        """Place the entry's files in `workdir` (hard links where possible) and describe them."""
        for name in entry.record["files"]:
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            try:
                os.link(entry.folder / name, target)
            except OSError:  # another file system: copy instead
                shutil.copy2(entry.folder / name, target)
        record = entry.record
        return ModelArtifact(
            workdir / record["path"], ModelFormat(record["format"]), stage, parent, record["metadata"],
            frozenset(Effect(value) for value in record.get("effects", [])), record.get("metrics", {}), record.get("gate", {}),
            reports=tuple(record.get("reports", [])),
        )

    def entries(self) -> list[Entry]:
        """Every intact entry, newest first."""
        found = (self.get(folder.name) for folder in self.folders())
        return sorted((e for e in found if e), key=lambda e: e.record.get("created", 0), reverse=True)

    def folders(self) -> list[Path]:
        """Entry folders, intact or not (temporary and lock folders start with a dot)."""
        if not self.root.is_dir():
            return []
        return [f for f in self.root.iterdir() if f.is_dir() and not f.name.startswith(".")]

    def decoded_bytes(self) -> int:
        """Bytes of the decoded streamed examples kept beside the entries (cleared with them)."""
        folder = self.root / DECODED
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        count = len(self.folders())
        shutil.rmtree(self.root, ignore_errors=True)
        return count


def entry_summary(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, to detect truncation or corruption later."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def matches(path: Path, facts: Mapping[str, Any]) -> bool:
    """Whether `path` still has the recorded size and hash."""
    return path.is_file() and path.stat().st_size == facts["size"] and entry_summary(path) == dict(facts)
