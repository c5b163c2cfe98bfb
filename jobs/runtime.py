"""What every job shares: Ray and runner settings, Ray start-up, logging, the CLI's exit
codes and the closing report (docs/architecture.md)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("codecsep")

# Exit codes of every job (README "Exit codes").
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_BUDGET, EXIT_STALLED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: embedded local Ray; "auto" inside a cluster (ray job submit)
    num_actors: int | str = 1  # actor pool size: N (fixed) or "MIN:MAX" (scales; survives node loss)
    num_gpus_per_actor: float = 0.0  # >0: each actor on a GPU (an error where there is none)
    num_cpus_per_actor: float = 2.0  # also the actor's torch threads
    batch_size: int = 16  # rows per actor call

    def __post_init__(self):
        lo, hi = self.actor_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ray.num_actors must be N or MIN:MAX with 1 <= MIN <= MAX, got {self.num_actors!r}")
        if self.batch_size < 1 or self.num_cpus_per_actor <= 0 or self.num_gpus_per_actor < 0:
            raise ValueError("ray.batch_size and ray.num_cpus_per_actor must be positive, ray.num_gpus_per_actor >= 0")

    @property
    def actor_range(self) -> tuple[int, int]:
        text = str(self.num_actors)
        try:
            lo, _, hi = text.partition(":")
            return int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"ray.num_actors must be N or MIN:MAX, got {self.num_actors!r}") from None

    @property
    def min_actors(self) -> int:
        return self.actor_range[0]

    @property
    def max_actors(self) -> int:
        return self.actor_range[1]


@dataclass(frozen=True)
class RunOptions:
    """How the runner treats a job: resume, error budget, progress and the stall bound."""

    checkpoint_path: str | None = None  # Ray Data checkpoint; null: <output>.checkpoint beside the output
    retry_errors: bool = False  # inputs that failed in an earlier run are due again
    max_error_fraction: float = 0.1  # more failed inputs than this: exit 3 (after writing everything)
    stall_timeout_s: float = 600.0  # no row completed for this long: exit 4, saying what is stuck
    progress_every_s: float = 10.0  # progress line interval
    min_rows_per_file: int = 64  # output rows buffered per written shard
    progress_bars: bool | None = None  # Ray Data's progress bars; null: when stderr is a terminal

    def __post_init__(self):
        if not 0 <= self.max_error_fraction <= 1:
            raise ValueError(f"run.max_error_fraction must be in [0, 1], got {self.max_error_fraction}")
        if self.stall_timeout_s <= 0 or self.progress_every_s <= 0 or self.min_rows_per_file < 1:
            raise ValueError("run.stall_timeout_s, run.progress_every_s and run.min_rows_per_file must be positive")

    @property
    def show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress_bars is None else self.progress_bars


def actors_value(text: str) -> int | str:
    """`--actors N` or `MIN:MAX`."""
    return text if ":" in text else int(text)


def add_ray_arguments(parser, batch_help: str = "rows per actor call") -> None:
    """The Ray and runner flags every actor-pool job takes, each onto its config key."""
    group = parser.add_argument_group("Ray")
    group.add_argument("--address", dest="ray.address", help="Ray address (default: embedded local Ray)")
    group.add_argument(
        "--actors",
        dest="ray.num_actors",
        type=actors_value,
        metavar="N|MIN:MAX",
        help="actor pool size: N, or MIN:MAX to scale (and survive node loss)",
    )
    group.add_argument(
        "--cpus-per-actor", dest="ray.num_cpus_per_actor", type=float, help="logical CPUs per actor (its torch threads)"
    )
    group.add_argument("--gpus-per-actor", dest="ray.num_gpus_per_actor", type=float, help="GPUs per actor (0: CPU)")
    group.add_argument("--batch-size", dest="ray.batch_size", type=int, help=batch_help)
    group.add_argument(
        "--retry-errors",
        dest="run.retry_errors",
        action="store_true",
        default=None,
        help="re-attempt inputs that failed before",
    )
    group.add_argument(
        "--max-error-fraction",
        dest="run.max_error_fraction",
        type=float,
        help="exit 3 when more inputs than this fraction fail",
    )
    group.add_argument(
        "--stall-timeout", dest="run.stall_timeout_s", type=float, help="exit 4 when no row completes for this long (s)"
    )


def run_cli(job: str, body: Callable[[], None], argv: list[str] | None = None) -> int:
    """A job's CLI body, with the exit codes of the README: 2 for bad settings (one line, no
    traceback), 3 over the error budget, 4 stalled, 1 for any other failure (storage,
    network, credentials, GPUs, a bug), with a one-line reason."""
    from codecsep_core.dac_codec import DacWeightsUnavailable
    from codecsep_core.prompt_encoder import PromptEncoderUnavailable
    from jobs.runner import JobFailed, JobStalled

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
        print(f"codecsep {job}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the CLI's last resort: one line, exit 1
        if {"-v", "--verbose"} & set(sys.argv[1:] if argv is None else argv):
            traceback.print_exc()
        print(f"codecsep {job}: error: {failure_reason(e)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


class UsageError(RuntimeError):
    """A setting the job cannot run with (missing weights, an unusable prompt table, ...)."""


def failure_reason(e: BaseException) -> str:
    """The innermost cause of a failure in one line (Ray wraps a worker's exception), said
    in words a user acts on where it is storage that failed."""
    while getattr(e, "cause", None) is not None and e.cause is not e:  # RayTaskError
        e = e.cause
    while e.__cause__ is not None:
        e = e.__cause__
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[-1] if lines else ''}"
    names = {c.__name__ for c in type(e).__mro__}
    refused = ("403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
    if isinstance(e, PermissionError) or ("ClientError" in names and any(w in text for w in refused)):
        return f"storage refused access ({text}): check the credentials and the bucket's permissions"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionError"}:
        return f"cannot connect to the storage endpoint ({text}): check AWS_ENDPOINT_URL and the network"
    return text


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        quiet_library_noise()


def quiet_library_noise() -> None:
    """Warnings every actor and worker would repeat, shown with -v only (also in Ray's
    workers, which inherit the environment variable)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::UserWarning:torch.nn.utils.weight_norm")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data logs a failed job's traceback itself; the CLI says it in one line (-v: all of it).
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def quiet_worker_logs() -> None:
    """Set up every worker of an embedded Ray: Ray Train's placement-group cleaner asks the
    State API, which embedded Ray (no dashboard) does not serve, whether the training
    controller lives, and logs a warning each time it cannot tell, all through training.
    Ray Train's workers also log every `report` at INFO through a logger named after its
    file path, which `LoggingConfig` (it filters `ray.train.*`) does not reach."""
    import ray

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    context = os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")
    logging.getLogger(context).setLevel(logging.WARNING)


# Workers of an embedded Ray without -v: Ray Data's per-dataset INFO lines (where its logs
# are, the execution plan, "execution finished") stay in its log files.
QUIET_WORKERS = {
    "worker_process_setup_hook": "jobs.runtime.quiet_worker_logs",
    "env_vars": {"RAY_DATA_LOG_LEVEL": "WARNING"},
}


def verbose() -> bool:
    """Whether the CLI was given -v: Ray's own INFO lines are shown only then."""
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def local_logical_cpus() -> int:
    return (os.cpu_count() or 1) + 2


def init_ray(options: RayOptions):
    """Connect to the cluster at `options.address`, else start embedded local Ray once, and
    never join some other cluster on the machine (`address="local"`)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, log_to_driver=True, logging_level="WARNING")
        else:
            # Two logical CPUs more than the machine has: Ray Data's checkpoint filter actor
            # and the read tasks each hold one while I/O-light, and without the spare slots
            # they deadlock against the stage's actors on a small machine.
            ray.init(
                address="local",
                num_cpus=local_logical_cpus(),
                include_dashboard=False,
                log_to_driver=True,
                logging_level="WARNING",
                runtime_env=None if verbose() else QUIET_WORKERS,
            )
        log.info("ray: %s", "connected to " + options.address if options.address else "embedded local cluster")
    return ray


@dataclass
class JobReport:
    """The closing numbers of a job; printed as one line and as JSON."""

    job: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    skipped_done: int = 0
    audio_hours: float = 0.0
    wall_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def x_realtime(self) -> float:
        return self.audio_hours * 3600 / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "job": self.job,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "errors": self.errors,
            "skipped_done": self.skipped_done,
            "audio_hours": round(self.audio_hours, 6),
            "wall_s": round(self.wall_s, 3),
            "x_realtime": round(self.x_realtime, 2),
            "stages_s": {k: round(v, 3) for k, v in self.stages_s.items()},
            **self.extra,
        }

    def summary(self) -> str:
        return (
            f"{self.job}: {self.rows_in} rows in, {self.rows_out} out, {self.errors} errors, "
            f"{self.skipped_done} already done; {self.audio_hours:.3f} h audio in {self.wall_s:.1f} s "
            f"({self.x_realtime:.1f}x realtime)"
        )

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages_s[name] = self.stages_s.get(name, 0.0) + time.perf_counter() - t0

    def emit(self) -> None:
        """The CLI's last words: the one-line summary, then the JSON report."""
        print(self.summary())
        print(json.dumps(self.to_dict(), sort_keys=True))
