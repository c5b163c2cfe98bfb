"""Ray start-up and what the job may ask of the cluster: embedded or connected Ray, the
environment actors inherit, device checks (GPUs asked for and absent is an error, never a
silent CPU run), and what a stalled job waits for."""

from __future__ import annotations

import logging
import os

from jobs.engine.errors import DeviceUnavailable
from jobs.engine.logs import QUIET_WORKERS, verbose
from jobs.engine.options import RayOptions

log = logging.getLogger("codecsep")


def local_logical_cpus() -> int:
    return (os.cpu_count() or 1) + 2


def init_ray(options: RayOptions):
    """Connect to the cluster at `options.address`, else start embedded local Ray once, and
    never join some other cluster on the machine (`address="local"`)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, log_to_driver=True, logging_level=logging.WARNING)
        else:
            # Two logical CPUs more than the machine has: Ray Data's checkpoint filter actor
            # and the read tasks each hold one while I/O-light, and without the spare slots
            # they deadlock against the stage's actors on a small machine.
            ray.init(
                address="local",
                num_cpus=local_logical_cpus(),
                include_dashboard=False,
                log_to_driver=True,
                logging_level=logging.WARNING,
                runtime_env=None if verbose() else QUIET_WORKERS,
            )
        log.info("ray: %s", "connected to " + options.address if options.address else "embedded local cluster")
    return ray


def actor_env() -> dict:
    """The driver's object-storage settings (AWS_* variables) and warning filters, passed on
    to the stage's actors, whose workers may have started before they were set, or on
    other nodes."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k == "PYTHONWARNINGS"}
    return {"runtime_env": {"env_vars": env}} if env else {}


def device_for(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 else "cpu"


def check_device(device: str) -> None:
    """In an actor: CUDA asked for and absent stops the job, it never runs on CPU instead."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        import socket

        raise DeviceUnavailable(
            f"GPUs were asked for (--gpus-per-actor) but CUDA is not available on {socket.gethostname()}"
        )


def check_cluster_gpus(ray, num_gpus: float) -> None:
    """On the driver, before any actor waits for a GPU that no node has (it would wait forever)."""
    if num_gpus > 0:
        have = ray.cluster_resources().get("GPU", 0)
        if have < num_gpus:
            raise DeviceUnavailable(
                f"--gpus-per-actor {num_gpus:g}, but the Ray cluster has {have:g} GPU(s): "
                "run on a GPU node or cluster, or pass --gpus-per-actor 0 to run on CPU"
            )


def cluster_state(ray) -> str:
    """What a stalled job waits for, in a line: free resources and actors not alive."""
    try:
        from ray.util.state import list_actors

        waiting = [
            a for a in list_actors(timeout=10) if a.state in ("PENDING_CREATION", "RESTARTING", "DEPENDENCIES_UNREADY")
        ]
        states = (
            ", ".join(f"{a.class_name} {str(a.state).lower()}" for a in waiting[:8]) or "no actor pending or restarting"
        )
        return f"actors waiting: {states}; free resources: {ray.available_resources()}"
    except Exception as e:  # noqa: BLE001 - diagnostics must not mask the stall itself
        return f"(cluster state unavailable: {type(e).__name__})"
