"""`codecsep <job> ...`: one entry point, one module per job (`python -m jobs.<job>` too)."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "ingest": "audio or .dac files -> code shards",
    "prompts": "texts -> prompt table (CLAP)",
    "separate": "code shards -> separated code shards (the main job)",
    "export": "code shards -> wav/flac/.dac files",
    "select": "separated shards -> code shards of the rows or active spans a prompt kept",
    "report": "separated shards -> one self-contained HTML page of scores and spans",
    "prepare-train": "stems + captions -> training shards",
    "train": "train the masker (Ray Train)",
    "evaluate": "separation metrics on a labelled set",
    "bench": "speed and compute figures",
    "demo": "the whole chain offline on generated audio",
}


def usage() -> str:
    lines = ["usage: codecsep <job> [--help] ...", "", "jobs:"]
    lines += [f"  {name:<14}{text}" for name, text in JOBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"codecsep: unknown job {job!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(f"jobs.{job.replace('-', '_')}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
