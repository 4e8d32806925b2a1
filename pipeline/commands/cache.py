"""`python -m pipeline.cache [list|clear] [--outputs DIR]`: list or empty the stage cache."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.run.cache import StageCache


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.cache [list|clear] [--outputs DIR]`: inspect or empty the stage cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.cache", description=main.__doc__)
    parser.add_argument("action", choices=["list", "clear"], nargs="?", default="list")
    parser.add_argument("--outputs", default="outputs", help="the runs' outputs folder (default: outputs)")
    args = parser.parse_args(argv)
    cache = StageCache(Path(args.outputs) / "cache")
    decoded = f" and {cache.decoded_bytes() / 2**20:.1f} MiB of decoded images" if cache.decoded_bytes() else ""
    if args.action == "clear":
        print(f"removed {cache.clear()} cache entries{decoded} from {cache.root}")
        return
    entries = cache.entries()
    for entry in entries:
        size = sum(facts["size"] for facts in entry.record["files"].values())
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.record["created"]))
        stage = entry.record.get("stage", "?")
        print(f"{entry.key[:12]}  {created}  {stage:<12} {entry.record['format']:<12} {size / 1024:10.1f} KiB")
    print(f"{len(entries)} entries{decoded} in {cache.root}")


if __name__ == "__main__":
    main()
