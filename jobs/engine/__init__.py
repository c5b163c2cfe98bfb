"""The engine every job runs on: its one public face. Jobs import from here, never from
the modules behind it; the engine imports no job, no `jobs.resolve` and no
`codecsep_core` (tests/test_layers.py checks both).

- the stage model (`Stage`, `StageOutput`, `ErrorRow`, `BadInput`, `in_folder`) and the
  one runner (`run_stage` over `Shards`, or `Planned` inputs and their `Items`), with its
  ledger of completed work per input (`InputFile`, `listed_files`; `Ledger`, `Wave` and
  `diff_with_ledger` for tools that measure or inspect it);
- settings (`RayOptions`, `RunOptions`, `add_ray_arguments`), typed configs
  (`JobParser`, `load_config`, ...), logging, Ray start-up and device checks;
- the failures a job ends with (`errors`) and its closing `JobReport`.
"""

from jobs.engine.cluster import check_cluster_gpus, check_device, device_for, init_ray
from jobs.engine.columns import in_folder
from jobs.engine.config import CONFIG_DIR, SRC_DST, JobParser, default_config_path, load_config, require, to_dict
from jobs.engine.errors import (
    EXIT_CHANGED_INPUTS,
    EXIT_ERROR_BUDGET,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STALLED,
    EXIT_USAGE,
    DeviceUnavailable,
    JobFailed,
    JobStalled,
    UsageError,
    failure_reason,
)
from jobs.engine.inputs import Items, Planned, Shards, listed_files
from jobs.engine.ledger import InputFile, Ledger, Wave
from jobs.engine.logs import drop_ray_noise, setup_logging, verbose
from jobs.engine.options import RayOptions, RunOptions, add_ray_arguments
from jobs.engine.plan import diff as diff_with_ledger
from jobs.engine.report import JobReport
from jobs.engine.runner import run_stage
from jobs.engine.stage import BadInput, ErrorRow, Stage, StageOutput, digest

__all__ = [
    "EXIT_CHANGED_INPUTS",
    "EXIT_ERROR_BUDGET",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_STALLED",
    "EXIT_USAGE",
    "CONFIG_DIR",
    "SRC_DST",
    "BadInput",
    "DeviceUnavailable",
    "ErrorRow",
    "InputFile",
    "Items",
    "JobFailed",
    "JobParser",
    "JobReport",
    "JobStalled",
    "Ledger",
    "Planned",
    "RayOptions",
    "RunOptions",
    "Shards",
    "Stage",
    "StageOutput",
    "UsageError",
    "Wave",
    "add_ray_arguments",
    "check_cluster_gpus",
    "check_device",
    "default_config_path",
    "device_for",
    "digest",
    "diff_with_ledger",
    "failure_reason",
    "in_folder",
    "init_ray",
    "listed_files",
    "load_config",
    "require",
    "run_stage",
    "drop_ray_noise",
    "setup_logging",
    "to_dict",
    "verbose",
]
