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

import logging
import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from jobs.engine import sources
from jobs.engine.cluster import actor_env, check_cluster_gpus, check_device, cluster_state, device_for, init_ray
from jobs.engine.columns import ERROR, ERROR_ID, ERROR_PROMPT, SOURCE, done_rows, error_table, with_private_columns
from jobs.engine.errors import JobFailed, JobStalled
from jobs.engine.options import RayOptions, RunOptions
from jobs.engine.report import JobReport
from jobs.engine.sinks import ShardSink
from jobs.engine.stage import ErrorRow, Stage
from jobs.engine.tally import batch_digest, start_tally
from storage import fs as sfs

log = logging.getLogger("codecsep.runner")


@dataclass(frozen=True)
class Shards:
    """Every Parquet shard under `uri`."""

    uri: str


@dataclass(frozen=True)
class Items:
    """Work items planned on the driver, one row each, carrying the stage's key column;
    `errors` are the items the planner found to be errors already (duplicate ids,
    unreadable inputs): they go to `_errors` and count as done like any error row."""

    table: pa.Table
    errors: list[ErrorRow] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows + len(self.errors)


# --------------------------------------------------------------------------- actors


class StageActor:
    """Ray Data callable class around a stage: `setup()` once, then batch after batch."""

    def __init__(self, stage: list, tally, device: str, cpu_threads: int):
        import ray
        import torch

        torch.set_num_threads(cpu_threads)  # Ray pins OMP threads to 1 in workers
        check_device(device)
        (ref,) = stage  # in a list, so that Ray hands over the reference, not the value
        self.stage, self.tally = ray.get(ref), tally
        self.stage.setup(device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        key = self.stage.key
        failed = pc.is_valid(batch[ERROR])
        early = batch.filter(failed)
        todo = batch.filter(pc.invert(failed))
        t0 = time.perf_counter()
        out = self.stage.process(todo) if todo.num_rows else None
        kept = [c for c in (key, SOURCE, ERROR, ERROR_ID, ERROR_PROMPT) if c in early.column_names]
        parts = [early.select(kept)] if early.num_rows else []
        if out is not None:
            parts += [with_private_columns(t) for t in (out.rows, out.side) if t is not None and t.num_rows]
            if out.done:
                parts.append(with_private_columns(done_rows(key, out.done)))
            if out.errors:
                parts.append(error_table(key, with_sources(out.errors, todo, key)))
        self.tally.add.remote(
            "batch:" + batch_digest(batch, key),
            rows=batch.num_rows,
            rows_out=out.rows.num_rows if out is not None and out.rows is not None else 0,
            errors=early.num_rows + (len(out.errors) if out is not None else 0),
            process_s=time.perf_counter() - t0,
            peak_actor_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **(out.tally if out is not None else {}),
        )
        if not parts:
            return pa.table({key: pa.array([], pa.string()), ERROR: pa.array([], pa.string())})
        return pa.concat_tables(parts, promote_options="permissive")


def with_sources(errors: list[ErrorRow], batch: pa.Table, key: str) -> list[ErrorRow]:
    """Error rows that name no source get the input their key came from."""
    if all(e.source is not None for e in errors):
        return errors
    where = dict(zip(batch[key].to_pylist(), batch[SOURCE].to_pylist()))
    return [e if e.source is not None else replace(e, source=where.get(e.key)) for e in errors]


# --------------------------------------------------------------------------- driver


@contextmanager
def data_context(checkpoint_uri: str, key: str, s3: sfs.S3Options, show_progress: bool):
    """Ray Data's settings for one job, restored afterwards: the DataContext is
    process-global, and the next job in the same driver must not inherit the checkpoint.
    Progress bars are Ray Data's rich progress display: in Ray 2.60 its tqdm bars (the
    default, `use_ray_tqdm`) print nothing from a driver on a terminal."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    names = ("checkpoint_config", "enable_progress_bars", "enable_rich_progress_bars", "use_ray_tqdm")
    saved = {name: getattr(ctx, name) for name in names}
    fs, path = sfs.pyarrow_filesystem(checkpoint_uri, s3)
    ctx.checkpoint_config = CheckpointConfig(
        id_column=key, checkpoint_path=path, delete_checkpoint_on_success=False, override_filesystem=fs
    )
    ctx.enable_progress_bars = ctx.enable_rich_progress_bars = show_progress
    ctx.use_ray_tqdm = False
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


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


def forget_runs(output: str, checkpoint_uri: str, stage: Stage, s3: sfs.S3Options) -> None:
    """Start afresh: drop the resume state, then the rows earlier runs wrote (the stage's
    output shards and `_errors`), so that every input is due and nothing is written twice.
    Files the stage writes itself (export's) are rewritten under the same names."""
    from storage import shards

    for uri in [checkpoint_uri] + [sfs.join(output, f) for f in stage.folders if f]:
        if sfs.exists(uri, s3):
            fs, path = sfs.resolve(uri, s3)
            fs.rm(path, recursive=True)
    errors = sfs.join(output, shards.ERRORS_DIR)
    for uri in (shards.list_shards(output, s3) if "" in stage.folders and sfs.exists(output, s3) else []) + (
        shards.list_shards(errors, s3) if sfs.exists(errors, s3) else []
    ):
        fs, path = sfs.resolve(uri, s3)
        fs.rm_file(path)


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
    fresh: bool = False,
) -> JobReport:
    """Run `stage` over `inputs` into `output`; fills and returns `report`. `fresh`: forget
    earlier runs first (`forget_runs`). Raises `JobFailed` (after everything is written)
    when errors exceed the error budget, or when the job stalls."""
    s3 = (s3 or sfs.S3Options()).with_env_defaults()
    t_start = time.perf_counter()
    checkpoint = checkpoint_uri(output, options)
    for uri in (output, checkpoint):
        sfs.check_bucket(uri, s3)
    if fresh:
        forget_runs(output, checkpoint, stage, s3)
    elif options.retry_errors:
        log.info(
            "%s: %d input(s) that failed before are due again", stage.name, forget_errors(output, checkpoint, stage, s3)
        )
    if isinstance(inputs, Shards):
        with report.stage("list_inputs"):
            files = sfs.list_file_sizes(inputs.uri, [".parquet"], s3)
        total, what = len(files), "shard(s)"
    else:
        files, total, what = [], inputs.num_rows, "item(s)"
    log.info("%s: %d input %s", stage.name, total, what)
    if total:
        ray = init_ray(ray_options)
        check_cluster_gpus(ray, ray_options.num_gpus_per_actor)
        tally = start_tally()
        source = (
            sources.ShardsSource(files, stage.key, ray_options.batch_size, s3, tally)
            if isinstance(inputs, Shards)
            else sources.ItemsSource(inputs.table, inputs.errors, stage.key, ray_options.batch_size, tally)
        )
        with report.stage("pipeline"), data_context(checkpoint, stage.key, s3, options.show_progress):
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

    ds = ray.data.read_datasource(source)
    ds = ds.map_batches(
        StageActor,
        fn_constructor_kwargs=dict(
            stage=[ray.put(stage)],  # model bytes go to the object store once, not with every actor
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
            state = cluster_state(ray)
            ray.shutdown()  # ends this driver's actors and tasks; the checkpoint keeps what was written
            raise JobStalled(
                f"{name}: no row completed for {options.stall_timeout_s:.0f} s; {state}. "
                "Rerun the same command to resume once the cluster has room."
            )
