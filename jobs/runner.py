"""The one runner under every stage (docs/architecture.md): inputs, resume, sink, progress, report.

    read (ShardsSource | ItemsSource) -> [checkpoint filter] -> map_batches(StageActor) -> ShardSink

- Inputs: Parquet shards (the driver lists them; read tasks read them) or work items a job
  planned on the driver. Either way a Ray Data Read, so Ray Data's row-level checkpoint
  filter drops rows whose key is done, and its checkpoint writer commits each written
  block (two-phase, with the sink): rerunning after a crash finishes the work, no row twice.
  The checkpoint sits beside the output (`<output>.checkpoint`) and is kept after success,
  so a rerun over a grown input processes only what is new.
- Stage: a callable class on an actor pool (`ActorPoolStrategy(min, max)`), one `setup()`
  per actor on its device; rows that are errors before any stage sees them skip `process`.
- Sink: `jobs.sinks.ShardSink`, output rows to shards and error rows to `_errors/`.
- Tally and progress: read tasks and actors add their counters to one small actor, per
  part (a shard, a batch), so work Ray runs again is counted once; the driver polls it,
  logs progress, and stops a job that completes nothing for `stall_timeout_s` (every wait
  is bounded). The report is built from the tally, never from assumptions.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs import sources
from jobs.runtime import JobReport, RayOptions, RunOptions, init_ray
from jobs.sinks import ShardSink
from jobs.sources import ERROR_ID, ERROR_PROMPT
from jobs.stage import Stage
from storage import fs as sfs

log = logging.getLogger("codecsep.runner")


class JobFailed(RuntimeError):
    """The job ran but must exit non-zero; `report` holds the counts, `exit_code` the reason."""

    def __init__(self, message: str, report: JobReport, exit_code: int):
        super().__init__(message)
        self.report, self.exit_code = report, exit_code


@dataclass(frozen=True)
class Shards:
    """Every Parquet shard under `uri`."""

    uri: str


@dataclass(frozen=True)
class Items:
    """Work items planned on the driver, one row each; they carry the stage's key column
    (and `sources.ERROR` for items that are errors already, e.g. duplicate ids)."""

    table: pa.Table


# --------------------------------------------------------------------------- actors


def _tally_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Tally:
        """Counters the read tasks and stage actors report, once per `part` (a shard, a
        batch): a part counted again (a retried task, a block Ray recomputes after a node
        loss) replaces its earlier counts, so the report counts each row once. `peak_*`
        keep the maximum."""

        def __init__(self):
            self.totals: dict[str, float] = {}
            self.parts: dict[str, dict[str, float]] = {}

        def add(self, part: str, **values):
            before = self.parts.get(part, {})
            self.parts[part] = values
            for k, v in values.items():
                if k.startswith("peak_"):
                    self.totals[k] = max(self.totals.get(k, 0), v)
                else:
                    self.totals[k] = self.totals.get(k, 0) + v - before.get(k, 0)

        def get(self):
            return self.totals

    # On the head node: worker nodes come and go (preemption), the head does not, and the
    # counts must survive (a driver on a worker node's machine would attach to that node).
    return Tally.options(resources={"node:__internal_head__": 0.001}).remote()


class StageActor:
    """Ray Data callable class around a stage: `setup()` once, then batch after batch."""

    def __init__(self, stage: Stage, tally, device: str, cpu_threads: int):
        import torch

        from jobs.resolve import check_device

        torch.set_num_threads(cpu_threads)  # Ray pins OMP threads to 1 in workers
        check_device(device)
        self.stage, self.tally = stage, tally
        stage.setup(device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        failed = pc.is_valid(batch[sources.ERROR])
        early = batch.filter(failed)
        todo = batch.filter(pc.invert(failed))
        t0 = time.perf_counter()
        out = self.stage.process(todo) if todo.num_rows else None
        kept = [c for c in (self.stage.key, sources.SOURCE, sources.ERROR, ERROR_ID) if c in early.column_names]
        parts = [early.select(kept)] if early.num_rows else []
        for rows in (out.rows, out.side) if out is not None else ():
            if rows is not None and rows.num_rows:
                if sources.ERROR not in rows.column_names:
                    rows = rows.append_column(sources.ERROR, pa.nulls(rows.num_rows, pa.string()))
                parts.append(rows)
        errors = out.errors if out is not None else []
        if errors:
            parts.append(self._error_rows(errors))
        self.tally.add.remote(
            "batch:" + batch_digest(batch, self.stage.key),
            rows=batch.num_rows,
            rows_out=out.rows.num_rows if out is not None and out.rows is not None else 0,
            errors=early.num_rows + len(errors),
            process_s=time.perf_counter() - t0,
            peak_actor_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **(out.tally if out is not None else {}),
        )
        if not parts:
            return pa.table({self.stage.key: pa.array([], pa.string()), sources.ERROR: pa.array([], pa.string())})
        return pa.concat_tables(parts, promote_options="permissive")

    def _error_rows(self, errors) -> pa.Table:
        return pa.table(
            {
                self.stage.key: pa.array([e.key for e in errors], pa.string()),
                sources.SOURCE: pa.array([e.source for e in errors], pa.string()),
                sources.ERROR: pa.array([e.reason for e in errors], pa.string()),
                ERROR_ID: pa.array([e.key if e.id is None else e.id for e in errors], pa.string()),
                ERROR_PROMPT: pa.array([e.prompt for e in errors], pa.string()),
            }
        )


def batch_digest(batch: pa.Table, key: str) -> str:
    """The same input rows give the same digest, whichever task or actor runs them."""
    rows = zip(batch[key].to_pylist(), batch[sources.SOURCE].to_pylist())
    return hashlib.sha1("\x00".join(f"{k}\x01{s}" for k, s in rows).encode()).hexdigest()


# --------------------------------------------------------------------------- driver


@contextmanager
def checkpointed(checkpoint_uri: str, key: str, s3: sfs.S3Options, show_progress: bool):
    """Ray Data's settings for one job, restored afterwards: the DataContext is
    process-global, and the next job in the same driver must not inherit the checkpoint."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    saved = ctx.checkpoint_config, ctx.enable_progress_bars
    fs, path = sfs.pyarrow_filesystem(checkpoint_uri, s3)
    ctx.checkpoint_config = CheckpointConfig(
        id_column=key, checkpoint_path=path, delete_checkpoint_on_success=False, override_filesystem=fs
    )
    ctx.enable_progress_bars = show_progress
    try:
        yield
    finally:
        ctx.checkpoint_config, ctx.enable_progress_bars = saved


def forget_errors(output: str, checkpoint_uri: str, stage: Stage, s3: sfs.S3Options) -> int:
    """Make the inputs that failed in earlier runs of `stage` due again: drop their keys
    from the checkpoint, then their error shards; -> how many. A crash in between leaves
    old error rows beside new results, never an input left undone."""
    from storage import shards

    errors_uri = sfs.join(output, shards.ERRORS_DIR)
    if not sfs.exists(errors_uri, s3) or not sfs.exists(checkpoint_uri, s3):
        return 0
    keys: set = set()
    mine = []
    for uri in shards.list_shards(errors_uri, s3):
        table = shards.read_table(uri, columns=["stage", "key"], s3=s3)
        rows = table.filter(pc.equal(table["stage"], stage.name))
        if rows.num_rows:
            keys.update(rows["key"].to_pylist())
            mine.append(uri)
    done = pa.array(sorted(keys), pa.string())
    for uri in shards.list_shards(checkpoint_uri, s3):
        table = shards.read_table(uri, s3=s3)
        kept = table.filter(pc.invert(pc.is_in(table[stage.key].cast(pa.string()), done)))
        if kept.num_rows < table.num_rows:
            shards.write_table_atomic(uri, kept, s3)
    for uri in mine:
        fs, path = sfs.resolve(uri, s3)
        fs.rm_file(path)
    return len(keys)


def checkpoint_uri(output: str, options: RunOptions) -> str:
    """Beside the output, never under it: Ray Data's recovery deletes files by name prefix there."""
    return options.checkpoint_path or output.rstrip("/") + ".checkpoint"


def run_stage(
    stage: Stage,
    inputs: Shards | Items,
    output: str,
    ray_options: RayOptions,
    options: RunOptions,
    report: JobReport,
    s3: sfs.S3Options | None = None,
) -> JobReport:
    """Run `stage` over `inputs` into `output`; fills and returns `report`. Raises
    `JobFailed` (after everything is written) when errors exceed the error budget, or when
    the job stalls."""
    s3 = (s3 or sfs.S3Options()).with_env_defaults()
    t_start = time.perf_counter()
    checkpoint = checkpoint_uri(output, options)
    for uri in (output, checkpoint):
        sfs.check_bucket(uri, s3)
    if options.retry_errors:
        log.info(
            "%s: %d input(s) that failed before are due again", stage.name, forget_errors(output, checkpoint, stage, s3)
        )
    if isinstance(inputs, Shards):
        with report.stage("list_inputs"):
            files = sfs.list_file_sizes(inputs.uri, [".parquet"], s3)
        total, what = len(files), "shard(s)"
    else:
        files, total, what = [], inputs.table.num_rows, "item(s)"
    log.info("%s: %d input %s", stage.name, total, what)
    if total:
        ray = init_ray(ray_options)
        from jobs.resolve import check_cluster_gpus

        check_cluster_gpus(ray, ray_options.num_gpus_per_actor)
        tally = _tally_actor()
        source = (
            sources.ShardsSource(files, stage.key, ray_options.batch_size, s3, tally)
            if isinstance(inputs, Shards)
            else sources.ItemsSource(inputs.table, ray_options.batch_size, tally)
        )
        with report.stage("pipeline"), checkpointed(checkpoint, stage.key, s3, options.progress_bars):
            _execute(ray, stage, source, output, ray_options, options, s3, tally, report)
        totals = ray.get(tally.get.remote(), timeout=60)
        ray.kill(tally)
        _fill(report, totals)
    report.wall_s = time.perf_counter() - t_start
    report.extra.update(output=output)
    processed = report.extra.get("items_processed", 0)
    if processed and report.errors > options.max_error_fraction * processed:
        raise JobFailed(
            f"{report.errors} of {processed} input rows failed, over max_error_fraction={options.max_error_fraction}: "
            f"see {sfs.join(output, '_errors')}",
            report,
            exit_code=3,
        )
    return report


def _fill(report: JobReport, totals: dict) -> None:
    """Counts from the tally: `rows` are the work items the stage saw (`input_rows`, when a
    stage groups input rows into items, the rows behind them)."""
    processed = int(totals.get("rows", 0))
    report.rows_in = int(totals.get("input_rows", processed))
    report.rows_out = int(totals.get("rows_out", 0))
    report.errors = int(totals.get("errors", 0))
    report.skipped_done = max(0, int(totals.get("rows_read", 0)) - processed)
    report.extra["items_processed"] = processed
    report.audio_hours = totals.get("audio_s", 0.0) / 3600
    report.stages_s.update({"actors_" + k[:-2]: v for k, v in totals.items() if k.endswith("_s") and k != "audio_s"})
    if "peak_actor_rss_mb" in totals:
        report.extra["peak_actor_rss_mb"] = round(totals["peak_actor_rss_mb"], 1)


def _execute(ray, stage, source, output, ray_options: RayOptions, options: RunOptions, s3, tally, report) -> None:
    from ray.data import ActorPoolStrategy

    from jobs.resolve import device_for

    ds = ray.data.read_datasource(source)
    ds = ds.map_batches(
        StageActor,
        fn_constructor_kwargs=dict(
            stage=stage,
            tally=tally,
            device=device_for(ray_options.num_gpus_per_actor),
            cpu_threads=max(1, int(ray_options.num_cpus_per_actor)),
        ),
        batch_size=ray_options.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=ray_options.min_actors, max_size=ray_options.max_actors),
        num_cpus=ray_options.num_cpus_per_actor,
        num_gpus=ray_options.num_gpus_per_actor,
        **actor_env(),
    )
    sink = ShardSink(output, stage.name, stage.key, s3, min_rows_per_file=options.min_rows_per_file)
    failure: list[BaseException] = []

    def write():
        try:
            ds.write_datasink(sink)
        except BaseException as e:  # noqa: BLE001 - re-raised in the driver's thread below
            failure.append(e)

    writer = threading.Thread(target=write, name=f"{stage.name}-write", daemon=True)
    writer.start()
    _watch(writer, tally, stage.name, options, ray)
    if failure:
        raise failure[0]


def actor_env() -> dict:
    """The driver's object-storage settings (AWS_* variables) and warning filters, passed on
    to the stage's actors, whose workers may have started before they were set, or on
    other nodes."""
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k == "PYTHONWARNINGS"}
    return {"runtime_env": {"env_vars": env}} if env else {}


def _watch(writer: threading.Thread, tally, name: str, options: RunOptions, ray) -> None:
    """Wait for the write, logging progress; stop the job when nothing completes for
    `stall_timeout_s` (the wait for the tally itself is bounded too)."""
    last, last_change, totals = None, time.monotonic(), {}
    while writer.is_alive():
        writer.join(timeout=options.progress_every_s)
        try:
            totals = ray.get(tally.get.remote(), timeout=options.progress_every_s)
        except Exception:  # noqa: BLE001 - a slow tally is not progress (the last counts stand); the bound holds
            pass
        seen = (totals.get("rows", 0), totals.get("rows_read", 0))
        if seen != last:
            last, last_change = seen, time.monotonic()
            log.info(
                "%s: %d rows done (%d out, %d errors), %.3f h audio",
                name,
                totals.get("rows", 0),
                totals.get("rows_out", 0),
                totals.get("errors", 0),
                totals.get("audio_s", 0.0) / 3600,
            )
        elif writer.is_alive() and time.monotonic() - last_change > options.stall_timeout_s:
            state = _cluster_state(ray)
            ray.shutdown()  # ends this driver's actors and tasks; the checkpoint keeps what was written
            raise JobStalled(
                f"{name}: no row completed for {options.stall_timeout_s:.0f} s; {state}. "
                "Rerun the same command to resume once the cluster has room."
            )


class JobStalled(RuntimeError):
    """No progress within the configured bound: exit non-zero instead of hanging."""


def _cluster_state(ray) -> str:
    """What the job waits for, in a line: free resources and actors not alive."""
    try:
        from ray.util.state import list_actors

        waiting = [
            a for a in list_actors(timeout=10) if a.state in ("PENDING_CREATION", "RESTARTING", "DEPENDENCIES_UNREADY")
        ]
        states = ", ".join(f"{a.class_name} {a.state.lower()}" for a in waiting[:8]) or "no actor pending or restarting"
        return f"actors waiting: {states}; free resources: {ray.available_resources()}"
    except Exception as e:  # noqa: BLE001 - diagnostics must not mask the stall itself
        return f"(cluster state unavailable: {type(e).__name__})"
