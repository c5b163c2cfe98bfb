"""The failures a job can end with, each raised where it happens; `jobs.cli` maps them to
the exit codes below (README "Exit codes")."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.engine.report import JobReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_BUDGET, EXIT_STALLED, EXIT_CHANGED_INPUTS = 0, 1, 2, 3, 4, 5


class UsageError(RuntimeError):
    """A setting the job cannot run with (missing weights, an unusable prompt table, ...)."""


class DeviceUnavailable(RuntimeError):
    """GPUs were asked for and are not there: an error, never a silent CPU run."""


class JobFailed(RuntimeError):
    """The job ran but must exit non-zero; `report` holds the counts, `exit_code` the reason."""

    def __init__(self, message: str, report: JobReport, exit_code: int):
        super().__init__(message)
        self.report, self.exit_code = report, exit_code


class JobStalled(RuntimeError):
    """No progress within the configured bound: exit non-zero instead of hanging."""


def failure_reason(e: BaseException) -> str:
    """The innermost cause of a failure in one line (Ray wraps a worker's exception), said
    in words a user acts on where it is storage that failed."""
    while (cause := getattr(e, "cause", None)) is not None and cause is not e:  # RayTaskError
        e = cause
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
