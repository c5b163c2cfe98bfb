"""The stage on Ray Data's actor pool: a callable class that sets the stage up once per
actor (Ray's batch-inference pattern) and turns each batch into rows for the sink."""

from __future__ import annotations

import resource
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from jobs.engine.cluster import check_device
from jobs.engine.columns import ERROR, ERROR_ID, ERROR_PROMPT, SOURCE, done_rows, error_table, with_private_columns
from jobs.engine.stage import ErrorRow
from jobs.engine.tally import batch_digest


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
