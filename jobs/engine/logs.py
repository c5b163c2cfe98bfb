"""Logging of every job: its own progress lines at INFO, library noise only with `-v`
(it stays in Ray's log files), in the driver and in every embedded Ray worker."""

from __future__ import annotations

import atexit
import logging
import os
import select
import sys
import threading
import warnings
from collections.abc import Callable


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


# Lines Ray prints to a program's stdout or stderr that no setting turns off, and that tell a user of
# a healthy run nothing (-v shows them; Ray's log files keep them):
RAY_NOISE = (
    # Ray Data passes its map transformer to its actors through the object store, and the
    # C++ core worker logs that at ERROR for any restartable actor (ray-project/ray#53727).
    b"has constructor arguments in the object store",
    # The raylet, when a 2-core machine starts workers slower than Ray Data asks for them.
    b"PYTHON worker processes have been started",
    # Ray Data in Ray Train's dataset split coordinator, which has no progress display to show.
    b"Progress bars disabled",
)
DRAIN_S = 5.0  # at exit, how long to wait for lines still in the pipes
PARTIAL_LINE_S = 0.05  # how long a line without its newline waits before it goes out as it is


def drop_ray_noise(noise: tuple[bytes, ...] = RAY_NOISE) -> None:
    """Pass this process's stdout and stderr (file descriptors 1 and 2: Python, the C++
    core worker, and the Ray processes it starts, whose lines Ray forwards to either)
    through filters that drop lines holding any of `noise`. For programs (the CLI) only:
    in-process callers keep their streams as they are."""
    pumps = [_filter_fd(fd, noise) for fd in (1, 2)]

    def drain() -> None:
        """Let what is in the pipes out: Ray shut down first (its atexit hook, registered
        when it was imported, would run after this one, and it prints its last forwarded
        lines as it stops), then the descriptors back where they were; each pipe ends once
        the processes that inherited it are gone."""
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for restore, _ in pumps:
            restore()
        for _, thread in pumps:
            thread.join(DRAIN_S)

    atexit.register(drain)


def _filter_fd(fd: int, noise: tuple[bytes, ...]) -> tuple[Callable[[], None], threading.Thread]:
    """fd -> a pipe (a pseudo-terminal where fd is a terminal, so progress displays and
    terminal checks behave as before) read by a thread that writes on, to where fd pointed,
    every line without `noise`; -> (a function that points fd back there, the thread)."""
    real = os.dup(fd)
    read_end, write_end = _terminal_like(real) if os.isatty(fd) else os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        """Never stops reading while the pipe is open (a writer to a full pipe would hang),
        even where what it writes to has gone. A partial line that waits (a progress bar
        redrawn with a carriage return) goes out after PARTIAL_LINE_S."""
        pending = b""
        while True:
            ready, _, _ = select.select([read_end], [], [], PARTIAL_LINE_S if pending else None)
            if not ready:
                if not any(n in pending for n in noise):
                    _write_all(real, pending)
                    pending = b""
                continue
            try:
                chunk = os.read(read_end, 65536)
            except OSError:  # a pseudo-terminal whose every writer has closed
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            _write_all(real, b"".join(line + b"\n" for line in lines if not any(n in line for n in noise)))
        _write_all(real, pending)
        os.close(read_end)

    def restore() -> None:
        os.dup2(real, fd)

    thread = threading.Thread(target=pump, name=f"fd{fd}-filter", daemon=True)
    thread.start()
    return restore, thread


def _terminal_like(terminal: int) -> tuple[int, int]:
    """A pseudo-terminal (master, slave) of the terminal's size, writing bytes as given."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": the real terminal does that itself
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(terminal, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        pass  # a terminal that reports no size: the pseudo-terminal keeps its default
    return master, slave


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # stderr's reader is gone; nothing is left to tell
