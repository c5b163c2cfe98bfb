"""The one runner under every stage (docs/architecture.md): plan, waves, resume, sink, report.

    list inputs -> diff with the ledger -> waves of due work, each:
        read (ShardsSource | ItemsSource) -> [checkpoint filter] -> map_batches(StageActor) -> ShardSink
        -> commit to the ledger -> drop the wave's row state

- Plan: the inputs are listed and compared with the ledger (`jobs.engine.ledger`); only
  due work is read: new inputs, and units an input lacks (a prompt added). Nothing due:
  the job ends within seconds of the listing, reading no input and starting no Ray.
- Waves of at most `run.wave_rows` rows, each one Ray Data pipeline whose rows Ray Data's
  row-level checkpoint recovers after a crash (two-phase commit with the sink), then
  committed to the ledger and its checkpoint dropped: resume state never outgrows a wave.
  The wave in flight is recorded (`inflight.json`) and finished first by the next run.
- Outputs know what made them: a run with other settings than the output's is refused
  (`Ledger.claim`). An input changed since it was processed is named and not processed.
- Stage: a callable class on an actor pool (`ActorPoolStrategy(min, max)`), one `setup()`
  per actor on its device (`jobs.engine.actor`).
- Tally and progress: read tasks and actors add their counters to one small actor, per
  part (a shard, a batch), so work Ray runs again is counted once; the driver polls it,
  logs progress, and stops a job that completes nothing for `stall_timeout_s` (every wait
  is bounded). The report is built from the tally and the ledger, never from assumptions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from jobs.engine import plan as planning
from jobs.engine import sources
from jobs.engine.actor import StageActor
from jobs.engine.cluster import actor_env, check_cluster_gpus, cluster_state, device_for, init_ray
from jobs.engine.errors import EXIT_CHANGED_INPUTS, EXIT_ERROR_BUDGET, JobFailed, JobStalled
from jobs.engine.inputs import Items, Planned, Shards, listed_files, with_footer_rows
from jobs.engine.ledger import Entry, InputFile, Ledger, Wave, new_wave_id
from jobs.engine.options import RayOptions, RunOptions
from jobs.engine.report import JobReport
from jobs.engine.sinks import ShardSink
from jobs.engine.stage import Stage
from jobs.engine.tally import start_tally
from storage import fs as sfs
from storage import shards

log = logging.getLogger("codecsep.runner")


@dataclass
class Work:
    """What a run does: its waves (the wave in flight first), the planned items of a
    planned job, and what it counts without reading."""

    plan: planning.Plan
    waves: list[Wave] = field(default_factory=list)
    items: Items | None = None
    planned: frozenset[str] = frozenset()  # every input planned (errors of others go with the first wave)
    skipped_rows: int = 0  # rows not read at all: done inputs, and items a retry leaves alone

    def summary(self) -> dict:
        due_rows: Counter = Counter()
        for wave in self.waves:
            for unit in wave.units:
                due_rows[unit] += wave.rows
        return {
            "listed": self.plan.listed,
            "due": sum(len(w.inputs) for w in self.waves),
            "rows_due": dict(due_rows),
            "waves": len(self.waves),
            "changed": [f.uri for f, _ in self.plan.changed],
        }


# --------------------------------------------------------------------------- planning


def plan_work(
    stage: Stage, inputs: Shards | Planned, ledger: Ledger, inflight: Wave | None, options: RunOptions, s3
) -> Work:
    """The run's waves from the listing and the ledger (`inflight`: the wave a crashed run
    left unfinished, read once by the caller)."""
    listed = listed_files(inputs.uri, (".parquet",), s3) if isinstance(inputs, Shards) else inputs.listing()
    entries = ledger.entries()
    plan = planning.diff(listed, entries, stage.units())
    for now, before in plan.changed:
        log.warning(
            "%s: %s changed since it was processed (size %d -> %d, version %s -> %s): not processed",
            stage.name,
            now.uri,
            before.size,
            now.size,
            before.version,
            now.version,
        )
    work = Work(plan, skipped_rows=plan.done_rows)
    current = {f.uri: f for f in listed}
    if inflight is not None:
        moved = [f for f in inflight.inputs if f.uri not in current or not current[f.uri].same_file(f)]
        if moved:  # replaced while their wave ran: what was written stays, the rest is refused
            plan.changed += [(current.get(f.uri, InputFile(f.uri, 0, "(gone)")), f) for f in moved]
            inflight = None
        else:
            work.waves.append(inflight)
    taken = {f.uri for f in inflight.inputs} if inflight else set()
    due = [d for d in plan.due if d.file.uri not in taken]
    retry = retry_waves(stage, ledger, entries, listed, isinstance(inputs, Shards)) if options.retry_errors else []
    work.skipped_rows -= sum(f.rows or 0 for w in retry for f in w.inputs)
    if isinstance(inputs, Shards):
        files = with_footer_rows([d.file for d in due], s3)
        due = [replace(d, file=f) for d, f in zip(due, files)]
        chunks = [[d] for d in due]
    else:
        planned_files = [d.file for d in due] + [f for w in work.waves + retry for f in w.inputs]
        items = inputs.plan(planned_files, listed) if planned_files else Items(_empty_items(stage.key))
        counts = items.rows_per_input()
        due = [replace(d, file=replace(d.file, rows=counts.get(d.file.uri, 0))) for d in due]
        work.items = items
        work.planned = frozenset(f.uri for f in planned_files)
        chunks = planning.chunks_of(due, items.item_inputs())
        for wave in retry:
            kept = items.of({f.uri for f in wave.inputs}, stage.key, frozenset(wave.retry_keys or ()))
            work.skipped_rows += sum(counts.get(f.uri, 0) for f in wave.inputs) - kept.num_rows
    work.waves += planning.pack(chunks, options.wave_rows) + retry
    return work


def _empty_items(key: str) -> pa.Table:
    return pa.table({key: pa.array([], pa.string()), "source": pa.array([], pa.string())})


def retry_waves(
    stage: Stage, ledger: Ledger, entries: dict[str, Entry], listed: list[InputFile], by_source: bool
) -> list[Wave]:
    """`--retry-errors`: the failed keys of this stage due again, in waves over the inputs
    they came from (`by_source`: the shards their error rows name; else every done input,
    whose items are planned again and only the failed ones run). The last wave retires
    the old error files."""
    errors_uri = sfs.join(ledger.output, shards.ERRORS_DIR)
    if not sfs.exists(errors_uri, ledger.s3):
        return []
    keys, sources_, retired = set(), set(), []
    for uri in shards.list_shards(errors_uri, ledger.s3):
        table = shards.read_table(uri, columns=["stage", "key", "source"], s3=ledger.s3)
        rows = table.filter(pc.equal(table["stage"], stage.name))
        if rows.num_rows:
            keys.update(rows["key"].to_pylist())
            sources_.update(rows["source"].to_pylist())
            retired.append(uri)
    by_units: dict[tuple[str, ...], list[InputFile]] = {}
    for f in listed:
        entry = entries.get(f.uri)
        if entry is None or not entry.file.same_file(f) or (by_source and f.uri not in sources_):
            continue
        units = tuple(u for u in stage.units() if u in entry.units)
        if units:
            by_units.setdefault(units, []).append(replace(f, rows=entry.file.rows))
    waves = [Wave(new_wave_id(), u, tuple(files), tuple(sorted(keys))) for u, files in by_units.items()]
    if waves:
        waves[-1] = replace(waves[-1], retired_errors=tuple(retired))
        log.info("%s: %d input(s) that failed before are due again", stage.name, len(keys))
    return waves


def rows_per_file(stage: Stage, wave: Wave, options: RunOptions) -> int:
    """Output rows per data file: `run.min_rows_per_file`, else about `run.target_file_mb`
    of the stage's output rows, from the wave's input bytes per row."""
    if options.min_rows_per_file is not None:
        return options.min_rows_per_file
    size, rows = sum(f.size for f in wave.inputs), max(1, wave.rows)
    row_bytes = max(1.0, stage.output_row_bytes(size / rows))
    return max(1, int(options.target_file_mb * 2**20 / row_bytes))


# --------------------------------------------------------------------------- running


@contextmanager
def data_context(checkpoint_uri: str, key: str, s3: sfs.S3Options, show_progress: bool):
    """Ray Data's settings for one wave, restored afterwards: the DataContext is
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


def forget_runs(output: str, checkpoint_uri: str, stage: Stage, ledger: Ledger) -> None:
    """Start afresh: drop the ledger and the row state, then the rows earlier runs wrote
    (the stage's output shards and `_errors`), so that every input is due and nothing is
    written twice. Files the stage writes itself (export's) are rewritten in place."""
    s3 = ledger.s3
    ledger.forget()
    for uri in [checkpoint_uri, sfs.join(output, shards.ERRORS_DIR)] + [
        sfs.join(output, f) for f in stage.folders if f
    ]:
        sfs.remove(uri, s3)
    if "" in stage.folders and sfs.exists(output, s3):
        for uri in shards.list_shards(output, s3):
            sfs.remove(uri, s3)


def finish_wave(wave: Wave, ledger: Ledger, checkpoint: str) -> None:
    """After the wave's commit to the ledger: the error files it replaces, its row state,
    then its in-flight record. Each step may be repeated after a crash."""
    for uri in wave.retired_errors:
        sfs.remove(uri, ledger.s3)
    sfs.remove(checkpoint, ledger.s3)
    ledger.finish()


def checkpoint_uri(output: str, options: RunOptions) -> str:
    """Beside the output, never under it: Ray Data's recovery deletes files by name prefix there."""
    return options.checkpoint_path or output.rstrip("/") + ".checkpoint"


def run_stage(
    stage: Stage,
    inputs: Shards | Planned,
    output: str,
    ray_options: RayOptions,
    options: RunOptions,
    report: JobReport,
    s3: sfs.S3Options | None = None,
    fresh: bool = False,
) -> JobReport:
    """Run `stage` over the due work of `inputs` into `output`; fills and returns `report`.
    `fresh`: forget earlier runs first. Raises `JobFailed` (after everything is written)
    when errors exceed the error budget, or when inputs changed since they were
    processed; `JobStalled` when nothing completes for the stall bound."""
    s3 = (s3 or sfs.S3Options()).with_env_defaults()
    t_start = time.perf_counter()
    checkpoint = checkpoint_uri(output, options)
    for uri in (output, checkpoint):
        sfs.check_bucket(uri, s3)
    ledger = Ledger(output, s3)
    if fresh and not options.dry_run:
        forget_runs(output, checkpoint, stage, ledger)
    inflight = ledger.inflight()
    if inflight is not None and not options.dry_run and inflight.id in ledger.waves_committed():
        finish_wave(inflight, ledger, checkpoint)  # the last run died after committing it
        inflight = None
    with report.stage("plan"):
        work = plan_work(stage, inputs, ledger, inflight, options, s3)
    stage.prepare(None if work.items is None else work.items.table)
    ledger.claim({"job": stage.name, **stage.settings()}, write=not options.dry_run)
    summary = work.summary()
    log.info(
        "%s: %d input(s) listed, %d due in %d wave(s), %d rows already done, %d changed",
        stage.name,
        summary["listed"],
        summary["due"],
        summary["waves"],
        work.plan.done_rows,
        len(summary["changed"]),
    )
    report.extra.update(output=output, ledger=ledger.folder, inputs=summary)
    if options.dry_run:
        report.extra["dry_run"] = dry_run(stage, work, options, s3)
    elif work.waves:
        run_waves(stage, work, output, ledger, checkpoint, ray_options, options, report, s3)
    report.skipped_done += work.skipped_rows
    report.wall_s = time.perf_counter() - t_start
    processed = report.extra.get("items_processed", 0)
    if processed and report.errors > options.max_error_fraction * processed:
        raise JobFailed(
            f"{report.errors} of {processed} input rows failed, over max_error_fraction={options.max_error_fraction}: "
            f"see {sfs.join(output, '_errors')}",
            report,
            exit_code=EXIT_ERROR_BUDGET,
        )
    if summary["changed"] and not options.dry_run:
        raise JobFailed(
            f"{len(summary['changed'])} input(s) changed since they were processed and were not processed "
            f"(their outputs would mix two versions): {', '.join(summary['changed'][:5])}. "
            "Give a new version a new name (it is then new work), or write to a new output folder",
            report,
            exit_code=EXIT_CHANGED_INPUTS,
        )
    return report


def run_waves(stage, work: Work, output, ledger, checkpoint, ray_options, options, report, s3) -> None:
    ray = init_ray(ray_options)
    check_cluster_gpus(ray, ray_options.num_gpus_per_actor)
    tally = start_tally()
    with report.stage("pipeline"):
        for n, wave in enumerate(work.waves):
            log.info(
                "%s: wave %d of %d: %d input(s), %d rows",
                stage.name,
                n + 1,
                len(work.waves),
                len(wave.inputs),
                wave.rows,
            )
            items = None
            if work.items is not None:
                keys = None if wave.retry_keys is None else frozenset(wave.retry_keys)
                items = work.items.of({f.uri for f in wave.inputs}, stage.key, keys, work.planned if n == 0 else None)
            ledger.start(wave)
            if items is None or items.num_rows:
                source = (
                    sources.ShardsSource(
                        [(f.uri, f.size) for f in wave.inputs],
                        stage.key,
                        ray_options.batch_size,
                        s3,
                        tally,
                        None if wave.retry_keys is None else frozenset(wave.retry_keys),
                    )
                    if items is None
                    else sources.ItemsSource(items.table, items.errors, stage.key, ray_options.batch_size, tally)
                )
                sink = ShardSink(
                    output, stage.name, stage.key, s3, min_rows_per_file=rows_per_file(stage, wave, options)
                )
                with data_context(checkpoint, stage.key, s3, options.show_progress):
                    _execute(ray, stage.narrowed(wave.units), source, sink, ray_options, options, tally)
            ledger.commit(wave, {f.uri: f.rows or 0 for f in wave.inputs})
            finish_wave(wave, ledger, checkpoint)
    totals = ray.get(tally.get.remote(), timeout=60)
    ray.kill(tally)
    _fill(report, totals)


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


def dry_run(stage: Stage, work: Work, options: RunOptions, s3) -> dict:
    """What a run would do, from the listing and the ledger: inputs and rows due per unit,
    changed inputs, audio hours (shards: from their `n_samples` and `sample_rate` columns)
    and the output files it would write. Nothing is written."""
    summary = work.summary()
    files = sum(planning.output_files(w.rows * len(w.units), rows_per_file(stage, w, options)) for w in work.waves)
    audio_s = 0.0
    if work.items is None:
        for wave in work.waves:
            for f in wave.inputs:
                audio_s += shard_audio_seconds(f.uri, s3)
    plan = {
        **summary,
        "output_files": files,
        "audio_hours_due": round(audio_s / 3600, 6) if work.items is None else None,
    }
    log.info(
        "%s: dry run: %d input(s) due, rows due per unit %s; about %d output file(s); %s audio hours",
        stage.name,
        summary["due"],
        summary["rows_due"],
        files,
        plan["audio_hours_due"],
    )
    for uri in summary["changed"]:
        log.info("%s: dry run: changed since processed, would not be processed: %s", stage.name, uri)
    return plan


def shard_audio_seconds(uri: str, s3) -> float:
    try:
        table = shards.read_present_columns(uri, ("n_samples", "sample_rate"), s3=s3)
    except Exception:  # noqa: BLE001 - an unreadable shard holds no audio the run would process
        return 0.0
    if table.num_columns < 2:
        return 0.0
    return float(
        pc.sum(pc.divide(table["n_samples"].cast("float64"), table["sample_rate"].cast("float64"))).as_py() or 0.0
    )


def _execute(ray, stage, source, sink, ray_options: RayOptions, options: RunOptions, tally) -> None:
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
    failure: list[BaseException] = []

    def write():
        try:
            ds.write_datasink(sink)
        except BaseException as e:  # noqa: BLE001 - re-raised in the driver's thread below
            failure.append(e)

    writer = threading.Thread(target=write, name=f"{sink.stage}-write", daemon=True)
    writer.start()
    _watch(writer, tally, sink.stage, options, ray)
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
