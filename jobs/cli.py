"""`codecsep <job> ...`: the one entry point over the job modules, and the exit codes.

Each job module has `command(argv)` (parse, run, print the report); `python -m jobs.<job>`
comes here too. Failures are raised where they happen (the engine's `errors`, the model
wrappers' own) and turned into exit codes only here (README "Exit codes").
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable

from jobs.engine import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STALLED,
    EXIT_USAGE,
    JobFailed,
    JobStalled,
    UsageError,
    drop_ray_noise,
    failure_reason,
)

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
    "demo": "the whole chain offline on scenes of speech, music and effects",
}


def usage() -> str:
    lines = ["usage: codecsep <job> [--help] ...", "", "jobs:"]
    lines += [f"  {name:<14}{text}" for name, text in JOBS.items()]
    return "\n".join(lines)


def run_cli(job: str, body: Callable[[], None], argv: list[str]) -> int:
    """A job's command with the exit codes of the README: 2 for bad settings (one line, no
    traceback), 3 over the error budget, 4 stalled, 1 for any other failure (storage,
    network, credentials, GPUs, a bug), with a one-line reason."""
    from codecsep_core.dac_codec import DacWeightsUnavailable
    from codecsep_core.prompt_encoder import PromptEncoderUnavailable

    try:
        body()
    except JobFailed as e:
        e.report.emit()
        print(f"codecsep {job}: error: {e}", file=sys.stderr)
        return e.exit_code
    except JobStalled as e:
        print(f"codecsep {job}: stalled: {e}", file=sys.stderr)
        return EXIT_STALLED
    except (ValueError, KeyError, FileNotFoundError, UsageError, PromptEncoderUnavailable, DacWeightsUnavailable) as e:
        if {"-v", "--verbose"} & set(argv):
            traceback.print_exc()
        print(f"codecsep {job}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the CLI's last resort: one line, exit 1
        if {"-v", "--verbose"} & set(argv):
            traceback.print_exc()
        print(f"codecsep {job}: error: {failure_reason(e)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None, program: bool | None = None) -> int:
    """`program` (default: when argv comes from the command line): this process is the
    codecsep program, so Ray's known-noise lines are dropped from its output unless -v."""
    program = argv is None if program is None else program
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return EXIT_OK if argv else EXIT_USAGE
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"codecsep: unknown job {job!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    if program and not {"-v", "--verbose"} & set(rest):
        drop_ray_noise()
    module = importlib.import_module(f"jobs.{job.replace('-', '_')}")
    return run_cli(job, lambda: module.command(rest), rest)


if __name__ == "__main__":
    sys.exit(main())
