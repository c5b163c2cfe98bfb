"""Inputs and command line of the separate job as the cluster tests run it: a tiny masker,
codec tables of the real architecture, a prompt table and code shards, under any URI."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from codecsep_core import Masker, MaskerConfig, masker_to_bytes
from storage import fs as sfs
from storage.prompt_table import PromptTable, write_prompt_table
from storage.schema import codes_to_arrow
from storage.shards import read_errors, read_table

PROMPTS = ("speech", "rain")
JOB_TIMEOUT_S = 300
MARKER = "CODECSEP_CLUSTER_TEST_RUN"


def code_shard(ids: list[str], n_frames: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, 1024, (12, n_frames)).astype(np.uint16) for _ in ids]
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "codes": codes_to_arrow(codes),
            "codec": pa.array(["dac_16khz"] * len(ids)),
            "sample_rate": pa.array([16000] * len(ids), pa.int32()),
            "n_samples": pa.array([n_frames * 320] * len(ids), pa.int64()),
        }
    )


def setup_inputs(root: str, tables, n_shards: int, rows_per_shard: int, n_frames: int = 100) -> dict[str, str]:
    """Models, prompt table and `n_shards` shards under `root` -> the job's URIs and ids."""
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    uris = {
        k: sfs.join(root, v)
        for k, v in (
            ("input", "in"),
            ("output", "out"),
            ("masker", "models/masker.safetensors"),
            ("codec_tables", "models/tables.safetensors"),
            ("prompt_table", "prompts.parquet"),
        )
    }
    sfs.write_bytes_atomic(uris["masker"], masker_to_bytes(masker))
    sfs.write_bytes_atomic(uris["codec_tables"], tables.to_bytes())
    vectors = torch.nn.functional.normalize(
        torch.randn(len(PROMPTS), 512, generator=torch.Generator().manual_seed(7)), dim=-1
    )
    write_prompt_table(uris["prompt_table"], PromptTable(PROMPTS, vectors.numpy(), "test"))
    for s in range(n_shards):
        ids = [f"s{s:03d}r{r:03d}" for r in range(rows_per_shard)]
        buf = io.BytesIO()
        pq.write_table(code_shard(ids, n_frames, s), buf)
        sfs.write_bytes_atomic(sfs.join(uris["input"], f"part-{s:03d}.parquet"), buf.getvalue())
    return uris


def all_ids(n_shards: int, rows_per_shard: int) -> set[str]:
    return {f"s{s:03d}r{r:03d}" for s in range(n_shards) for r in range(rows_per_shard)}


def job_args(uris: dict[str, str], *extra: str) -> list[str]:
    """`jobs.separate` arguments for these inputs, one output file per actor batch."""
    args = [
        "--input",
        uris["input"],
        "--output",
        uris["output"],
        "--masker",
        uris["masker"],
        "--codec-tables",
        uris["codec_tables"],
        "--prompt-table",
        uris["prompt_table"],
    ]
    return args + [a for p in PROMPTS for a in ("--prompt", p)] + list(extra) + ["run.min_rows_per_file=1"]


@dataclass
class JobRun:
    returncode: int | None  # None: still running at its deadline, then killed
    output: str  # stdout and stderr together
    wall_s: float


def start_job(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """The job as a user starts it, in its own session, output to `log`; -> (process, marker)."""
    marker = uuid.uuid4().hex
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.separate", *args],
            env={**env, MARKER: marker},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, marker


def finish_job(proc: subprocess.Popen, marker: str, log: Path, t0: float, timeout_s: float) -> JobRun:
    """Wait at most until `t0 + timeout_s`; a job still running then is killed with every
    process it started (an embedded Ray's processes leave its process group, so they are
    found by the marker in their environment)."""
    try:
        rc = proc.wait(timeout=max(0.0, t0 + timeout_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        rc = None
    kill_marked(proc, marker)
    return JobRun(rc, log.read_text(errors="replace"), time.monotonic() - t0)


def kill_marked(proc: subprocess.Popen, marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if p.environ().get(MARKER) == marker:
                p.kill()
    proc.wait()


def run_job(args: list[str], env: dict[str, str], log: Path, timeout_s: float = JOB_TIMEOUT_S) -> JobRun:
    """The job run to its end, or killed (with all its processes) at `timeout_s`."""
    t0 = time.monotonic()
    proc, marker = start_job(args, env, log)
    return finish_job(proc, marker, log, t0, timeout_s)


def output_pairs(output: str) -> list[tuple[str, str]]:
    """Every (id, prompt) written, duplicates kept."""
    out = read_table(output, columns=["id", "prompt"])
    return list(zip(out["id"].to_pylist(), out["prompt"].to_pylist()))


def assert_exactly_once(output: str, ids: set[str]) -> None:
    pairs = output_pairs(output)
    assert len(pairs) == len(set(pairs)), f"{len(pairs) - len(set(pairs))} duplicate (id, prompt) rows"
    missing = {(i, p) for i in ids for p in PROMPTS} - set(pairs)
    assert not missing, f"{len(missing)} (id, prompt) rows missing"


def error_rows(output: str) -> int:
    try:
        return read_errors(output).num_rows
    except FileNotFoundError:
        return 0
