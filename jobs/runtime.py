"""What every job shares: Ray start-up, logging, timing and the closing report."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("codecsep")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: embedded local Ray; "auto" or ray://host:10001 for a cluster
    num_actors: int = 1
    num_gpus_per_actor: float = 0.0  # >0 puts each actor on a GPU
    num_cpus_per_actor: float = 2.0  # also the actor's torch threads
    batch_size: int = 16  # clips per actor call


def add_ray_arguments(parser, batch_help: str = "rows per actor call") -> None:
    """The Ray flags every Ray Data job takes; `ray_values` maps them onto `ray.*` keys."""
    group = parser.add_argument_group("Ray")
    group.add_argument("--address", help="Ray address (default: embedded local Ray)")
    group.add_argument("--actors", type=int, help="actor pool size")
    group.add_argument("--cpus-per-actor", type=float, help="logical CPUs per actor (also its torch threads)")
    group.add_argument("--gpus-per-actor", type=float, help="GPUs per actor (0: CPU)")
    group.add_argument("--batch-size", type=int, help=batch_help)


def ray_values(args) -> dict:
    return {
        "ray.address": args.address, "ray.num_actors": args.actors, "ray.num_cpus_per_actor": args.cpus_per_actor,
        "ray.num_gpus_per_actor": args.gpus_per_actor, "ray.batch_size": args.batch_size,
    }


def run_cli(job: str, body, errors: tuple[type[BaseException], ...] = ()) -> int:
    """A job's CLI body; expected failures (bad settings, missing files or models) end as
    one line and exit code 2 instead of a traceback."""
    try:
        body()
    except (ValueError, FileNotFoundError, *errors) as e:
        print(f"codecsep {job}: error: {e}")
        return 2
    return 0


def sum_summaries(ds, progress) -> dict[str, float]:
    """Totals of the per-call summary rows a job's actors return, with `progress(totals)`
    after each, so that long jobs report as they go."""
    totals: dict[str, float] = defaultdict(float)
    for summary in ds.iter_rows():
        for k, v in summary.items():
            totals[k] += v
        progress(totals)
    return totals


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def local_logical_cpus() -> int:
    return (os.cpu_count() or 1) + 2


def init_ray(options: RayOptions):
    """Connect to a cluster when an address is given, else start embedded local Ray once."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        # Embedded Ray advertises two logical CPUs more than the machine has: Ray Data's
        # checkpoint filter actor and the read tasks each hold one while being I/O-light,
        # and without the spare slots they deadlock against the separation actors.
        kwargs = {"address": options.address} if options.address else {"num_cpus": local_logical_cpus()}
        ray.init(**kwargs, log_to_driver=True, include_dashboard=False, logging_level="WARNING")
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
            "job": self.job, "rows_in": self.rows_in, "rows_out": self.rows_out, "errors": self.errors,
            "skipped_done": self.skipped_done, "audio_hours": round(self.audio_hours, 6),
            "wall_s": round(self.wall_s, 3), "x_realtime": round(self.x_realtime, 2),
            "stages_s": {k: round(v, 3) for k, v in self.stages_s.items()}, **self.extra,
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
