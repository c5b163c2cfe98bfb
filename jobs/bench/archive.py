"""Archives that grow (DESIGN.md §7): what a scheduled rerun reads, and what resume state
costs, as the archive grows.

- Reruns: `separate` (the `tiny` masker, `emit=scores`: the figure is about input, not
  compute) over `archive_shards` shards of `archive_rows` clips on a loopback S3 server
  (moto), read through a proxy that counts every GET and its bytes under the input
  prefix: the first run, a rerun with 1% new shards, a rerun with nothing new.
- Resume state: a ledger synthesized for `archive_resume_rows` done rows in shards of
  `archive_rows_per_shard` (the 360 M / 36,000 archive's 10,000), planned against its
  listing in a fresh process (peak memory, and the same without a ledger); the
  row state a crashed run recovers is the wave in flight, at most `run.wave_rows` ids,
  whatever the archive holds (Ray's checkpoint filter array: bytes per id from
  `scale.measure_checkpoint_ids`).
- Output files: data files per 1 M rows at the default `run.target_file_mb`, for codes of
  `clip_seconds` clips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch

from jobs.bench.config import BenchConfig
from jobs.bench.models import Models

log = logging.getLogger("codecsep.bench")


@contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def measure_reruns(cfg: BenchConfig, m: Models) -> dict:
    """First run, 1% new, nothing new: input GETs, bytes and wall time of each."""
    from moto.server import ThreadedMotoServer

    from codecsep_core import Masker, MaskerConfig, save_masker
    from jobs.bench.s3_proxy import FaultProxy
    from jobs.separate import SeparateConfig, run
    from storage import fs as sfs
    from storage.prompt_table import PromptTable, write_prompt_table
    from storage.shards import write_table_atomic

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    upstream = f"http://{host}:{port}"
    creds = dict(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    gen = torch.Generator().manual_seed(cfg.seed + 6)
    n_frames = m.frames(cfg.archive_clip_seconds)
    bucket = f"archive-{uuid.uuid4().hex[:8]}"
    new_shards = max(1, cfg.archive_shards // 100)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="codecsep-bench-archive-") as tmp,
            _environ(AWS_ENDPOINT_URL=upstream, **creds),
        ):
            import boto3

            boto3.client("s3", endpoint_url=upstream, region_name="us-east-1").create_bucket(Bucket=bucket)
            root = Path(tmp)

            def put(first: int, n: int) -> None:
                for k in range(first, first + n):
                    ids = [f"s{k:05d}-{i:04d}" for i in range(cfg.archive_rows)]
                    write_table_atomic(f"s3://{bucket}/codes/part-{k:05d}.parquet", m.random_shard(ids, n_frames, gen))

            put(0, cfg.archive_shards)
            torch.manual_seed(cfg.seed)
            save_masker(Masker(MaskerConfig.preset("tiny")).eval(), root / "masker.safetensors")
            m.tables.save(root / "tables.safetensors")
            write_prompt_table(str(root / "prompts.parquet"), PromptTable(("prompt 0",), m.prompts[:1].numpy()))
            job = SeparateConfig(
                input=f"s3://{bucket}/codes",
                output=f"s3://{bucket}/separated",
                prompts=["prompt 0"],
                masker=str(root / "masker.safetensors"),
                codec_tables=str(root / "tables.safetensors"),
                prompt_table=str(root / "prompts.parquet"),
                emit="scores",
            )
            runs = []
            with FaultProxy(upstream, lifetime_s=4 * 3600) as proxy, _environ(AWS_ENDPOINT_URL=proxy.endpoint):
                for name in ("first run", "1% new", "nothing new"):
                    if name == "1% new":
                        put(cfg.archive_shards, new_shards)
                    proxy.reset_counts()
                    t0 = time.perf_counter()
                    report = run(job)
                    wall = time.perf_counter() - t0
                    gets, nbytes = proxy.reads(f"/{bucket}/codes/")
                    runs.append(
                        {
                            "run": name,
                            "shards_listed": report.extra["inputs"]["listed"],
                            "shards_due": report.extra["inputs"]["due"],
                            "rows_in": report.rows_in,
                            "rows_skipped": report.skipped_done,
                            "input_gets": gets,
                            "input_bytes": nbytes,
                            "wall_s": wall,
                        }
                    )
                    log.info("archive: %s", runs[-1])
            ledger_files = len(sfs.list_files(f"s3://{bucket}/separated/_ledger"))
    finally:
        server.stop()
    first = runs[0]["input_bytes"] or 1
    for r in runs:
        r["bytes_vs_first_run"] = r["input_bytes"] / first
    return {
        "shards": cfg.archive_shards,
        "rows_per_shard": cfg.archive_rows,
        "clip_seconds": cfg.archive_clip_seconds,
        "new_shards": new_shards,
        "runs": runs,
        "ledger_files": ledger_files,
    }


def plan_memory(ledger: str, n_shards: int, rows_per_shard: int) -> dict:
    """In this (fresh) process: read the ledger at `ledger` (may be empty) and plan one
    unit over a listing of `n_shards` inputs it names; the peak of Python and Arrow memory
    that takes, and its time."""
    import tracemalloc

    import pyarrow as pa

    from jobs.engine import InputFile, Ledger, diff_with_ledger

    listed = [InputFile(f"s3://archive/codes/part-{k:06d}.parquet", 40_000_000, f"etag-{k}") for k in range(n_shards)]
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    plan = diff_with_ledger(listed, Ledger(ledger).entries(), ("target:speech",))
    seconds = time.perf_counter() - t0
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "plan_s": seconds,
        "peak_mb": (python_peak + max(0, pa.total_allocated_bytes() - arrow_before)) / 2**20,
        "done_rows": plan.done_rows,
        "due": len(plan.due),
        "rows_per_shard": rows_per_shard,
    }


def _synthesize_ledger(output: Path, n_shards: int, rows_per_shard: int) -> None:
    """The ledger a run over `n_shards` done shards leaves, written by the ledger itself."""
    from jobs.engine import InputFile, Ledger, Wave

    done = tuple(
        InputFile(f"s3://archive/codes/part-{k:06d}.parquet", 40_000_000, f"etag-{k}", rows_per_shard)
        for k in range(n_shards)
    )
    Ledger(str(output)).commit(Wave("synthesized", ("target:speech",), done), {})


def _plan_in_fresh_process(ledger: Path, n_shards: int, rows_per_shard: int) -> dict:
    code = (
        "import json, sys; from jobs.bench.archive import plan_memory; "
        "print(json.dumps(plan_memory(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ledger), str(n_shards), str(rows_per_shard)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_resume_state(cfg: BenchConfig, bytes_per_id: float, wave_rows: int) -> list[dict]:
    """Per done-row count: the ledger on disk, the driver's planning memory and time (over
    the same listing without a ledger), the checkpoint filter's ids at resume."""
    rows_per_shard = cfg.archive_rows_per_shard
    out = []
    with tempfile.TemporaryDirectory(prefix="codecsep-bench-ledger-") as tmp:
        for rows in cfg.archive_resume_rows:
            n_shards = math.ceil(rows / rows_per_shard)
            folder = Path(tmp) / f"out-{rows}"
            _synthesize_ledger(folder, n_shards, rows_per_shard)
            with_ledger = _plan_in_fresh_process(folder, n_shards, rows_per_shard)
            without = _plan_in_fresh_process(Path(tmp) / "empty", n_shards, rows_per_shard)
            ledger_bytes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            filter_ids = wave_rows  # at most the wave in flight: committed waves hold no row state
            out.append(
                {
                    "done_rows": with_ledger["done_rows"],
                    "shards": n_shards,
                    "ledger_bytes": ledger_bytes,
                    "plan_s": with_ledger["plan_s"],
                    "driver_plan_memory_mb": with_ledger["peak_mb"],
                    "driver_plan_memory_no_ledger_mb": without["peak_mb"],
                    "filter_ids_at_most": filter_ids,
                    "filter_memory_at_most_mb": filter_ids * bytes_per_id / 2**20,
                    "filter_memory_before_ledger_mb": rows * bytes_per_id / 2**20,
                }
            )
            log.info("archive: resume state %s", out[-1])
    return out


def files_per_million_rows(cfg: BenchConfig, m: Models, target_file_mb: float) -> dict:
    """Data files a 1 M-row codes output takes at `target_file_mb`, from the bytes of a
    real shard of `clip_seconds` clips (the runner sizes files from input bytes per row)."""
    import io

    import pyarrow.parquet as pq

    rows = 64
    table = m.random_shard(
        [f"c{i:04d}" for i in range(rows)], m.frames(cfg.clip_seconds), torch.Generator().manual_seed(3)
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    row_bytes = len(buf.getvalue()) / rows
    rows_per_file = int(target_file_mb * 2**20 / row_bytes)
    return {
        "clip_seconds": cfg.clip_seconds,
        "bytes_per_row": row_bytes,
        "target_file_mb": target_file_mb,
        "rows_per_file": rows_per_file,
        "files_per_million_rows": math.ceil(1_000_000 / rows_per_file),
        "files_per_million_rows_before": math.ceil(1_000_000 / 64),  # min_rows_per_file: 64, the old default
    }


def measure_archive(cfg: BenchConfig, m: Models, bytes_per_id: float) -> dict:
    from jobs.engine import RunOptions

    options = RunOptions()
    return {
        "reruns": measure_reruns(cfg, m),
        "resume_state": measure_resume_state(cfg, bytes_per_id, options.wave_rows),
        "wave_rows": options.wave_rows,
        "output_files": files_per_million_rows(cfg, m, options.target_file_mb),
    }
