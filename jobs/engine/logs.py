"""Logging of every job: its own progress lines at INFO, library noise only with `-v`
(it stays in Ray's log files), in the driver and in every embedded Ray worker."""

from __future__ import annotations

import logging
import os
import sys
import warnings


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
    "worker_process_setup_hook": "jobs.engine.logs.quiet_worker_logs",
    "env_vars": {"RAY_DATA_LOG_LEVEL": "WARNING"},
}


def verbose() -> bool:
    """Whether the CLI was given -v: Ray's own INFO lines are shown only then."""
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG
