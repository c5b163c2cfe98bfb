"""A machine lost under a running job, for the soak and the tests: kill -9 of the driver
and every process of its Ray instance."""

from __future__ import annotations

import os
import signal
import uuid

MARKER = "CODECSEP_RUN_MARKER"


class LostMachine:
    """Start a job with `env` and `kill()` it with kill -9: the driver and every process of
    its Ray instance. Ray's node processes leave the driver's process group and tree, so
    they are found by an environment variable they all inherit."""

    def __init__(self):
        self.marker = uuid.uuid4().hex
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", MARKER: self.marker}

    def kill(self, proc) -> None:
        import psutil

        os.killpg(proc.pid, signal.SIGKILL)
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARKER) == self.marker:
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        proc.wait()
