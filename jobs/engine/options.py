"""The settings every actor-pool job shares: Ray resources (`ray.*`) and how the runner
treats a job (`run.*`), with the CLI flags that set them."""

from __future__ import annotations

import sys
from dataclasses import dataclass


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
    """How the runner treats a job: the ledger and its waves, resume, error budget, file
    sizes, progress and the stall bound."""

    checkpoint_path: str | None = None  # row state of the wave in flight; null: <output>.checkpoint beside the output
    wave_rows: int = 2_000_000  # input rows per wave: committed to the ledger, then its row state dropped
    retry_errors: bool = False  # inputs that failed in an earlier run are due again
    max_error_fraction: float = 0.1  # more failed inputs than this: exit 3 (after writing everything)
    stall_timeout_s: float = 600.0  # no row completed for this long: exit 4, saying what is stuck
    progress_every_s: float = 10.0  # progress line interval
    target_file_mb: float = 128.0  # about this much data per output file
    min_rows_per_file: int | None = None  # output rows per file; null: sized from target_file_mb
    progress_bars: bool | None = None  # Ray Data's progress bars; null: when stderr is a terminal
    dry_run: bool = False  # plan from the listing and the ledger, say what a run would do, touch nothing

    def __post_init__(self):
        if not 0 <= self.max_error_fraction <= 1:
            raise ValueError(f"run.max_error_fraction must be in [0, 1], got {self.max_error_fraction}")
        positive = (self.stall_timeout_s, self.progress_every_s, self.wave_rows, self.target_file_mb)
        if min(positive) <= 0 or (self.min_rows_per_file is not None and self.min_rows_per_file < 1):
            raise ValueError(
                "run.stall_timeout_s, run.progress_every_s, run.wave_rows, run.target_file_mb and "
                "run.min_rows_per_file must be positive"
            )

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
    group.add_argument(
        "--dry-run",
        dest="run.dry_run",
        action="store_true",
        default=None,
        help="say what a run would do (inputs, rows and files due, changed inputs) and touch nothing",
    )
