"""Where a stage's rows come from: Parquet shards under a URI, or work items a job planned.

Both are Ray Data datasources, i.e. Read operators, which is what Ray Data's row-level
checkpoint filter attaches to: rows whose key is already done are dropped right after the
read, so every job resumes the same way. The driver only lists files; footers and rows are
read by the read tasks, in parallel. A shard that is not Parquet, or a row with no key, is
an error row from the start (`columns.ERROR` set): it flows through the pipeline to `_errors` and
into the checkpoint like any row, so a rerun does not report it twice. Failures to reach
storage are not data problems: they raise, and the job stops.
"""

from __future__ import annotations

import functools
import io
import logging
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from jobs.engine.columns import SOURCE, error_table, with_private_columns
from jobs.engine.stage import ErrorRow
from storage import fs as sfs

log = logging.getLogger("codecsep.sources")


def _mark(table: pa.Table, source: str) -> pa.Table:
    return with_private_columns(table.append_column(SOURCE, pa.array([source] * table.num_rows, pa.string())))


def error_block(key: str, keys: list[str], source: str, reason: str) -> pa.Table:
    return error_table(key, [ErrorRow(k, reason, source, named=False) for k in keys])


def _keyed(table: pa.Table, key: str, source: str, first_row: int) -> list[pa.Table]:
    """A batch of a shard, with rows that have no key split off as error rows under a key
    made from their position (stable across reruns, so resume recognises them)."""
    values = table[key]
    missing = np.asarray(pc.fill_null(pc.equal(values.cast(pa.string()), ""), True))
    if not missing.any():
        return [_mark(table, source)]
    rows = np.flatnonzero(missing)
    blocks = [error_block(key, [f"{source}#row{first_row + i}" for i in rows], source, f"missing {key}")]
    good = np.flatnonzero(~missing)
    if good.size:
        blocks.insert(0, _mark(table.take(good), source))
    return blocks


WHOLE_SHARD_BYTES = 64 * 2**20
READ_BUFFER_BYTES = 2**20


class _StorageReadFailed(Exception):
    """A read of a shard's bytes failed: storage's failure (`__cause__`), not the data's."""


class _TaggedReads(io.RawIOBase):
    """A shard file whose failed reads say so, so that anything else pyarrow raises while
    parsing is the data's fault (a corrupt footer is a plain OSError in pyarrow)."""

    def __init__(self, f):
        self.f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._storage(self.f.seek, offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, buffer) -> int:
        data = self._storage(self.f.read, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @staticmethod
    def _storage(call, *args):
        try:
            return call(*args)
        except Exception as e:
            raise _StorageReadFailed() from e


def _parse_shard(source, uri: str, key: str, rows_per_block: int):
    """Blocks of one shard's rows; a parse failure is the shard's error row (the whole
    shard, or what follows the last block read). -> rows read."""
    first = 0
    try:
        parquet = pq.ParquetFile(source, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)  # row group by row group
        if key not in parquet.schema_arrow.names:
            raise ValueError(f"no {key!r} column")
        for batch in parquet.iter_batches(batch_size=rows_per_block):
            table = pa.Table.from_batches([batch])
            yield from _keyed(table, key, uri, first)
            first += table.num_rows
    except _StorageReadFailed as e:
        raise e.__cause__ or e from None
    except (pa.ArrowException, OSError, ValueError) as e:
        where = f" after row {first}" if first else ""
        yield error_block(key, [uri], uri, f"unreadable shard{where} (not a Parquet file of rows with {key!r}): {e}")
    return first


def _read_shards(files: list[tuple[str, int]], key: str, rows_per_block: int, s3: sfs.S3Options, tally, keys=None):
    """Fetching a shard's bytes is storage (a failure stops the job); parsing them is data.
    A shard up to WHOLE_SHARD_BYTES comes in one request; a larger one (a user's own
    Parquet file) in ranges, footer then row groups, so it never sits whole in memory.
    `keys`: only rows with these keys go on (a retry of failed rows)."""
    for uri, size in files:
        with _opened(uri, size, s3) as source:
            blocks = _parse_shard(source, uri, key, rows_per_block)
            first = yield from (blocks if keys is None else _only(blocks, key, keys))
        if tally is not None:
            tally.add.remote(f"read:{uri}", rows_read=max(first, 1))


@contextmanager
def _opened(uri: str, size: int, s3: sfs.S3Options):
    if size <= WHOLE_SHARD_BYTES:
        yield pa.BufferReader(sfs.read_bytes(uri, s3))
        return
    fs, path = sfs.resolve(uri, s3)
    with fs.open(path, "rb", block_size=READ_BUFFER_BYTES * 8) as f:
        yield _TaggedReads(f)


def _only(blocks, key: str, keys: frozenset[str]):
    """The rows of `blocks` whose key is one of `keys`; -> what `blocks` returns."""
    wanted = pa.array(sorted(keys), pa.string())
    while True:
        try:
            block = next(blocks)
        except StopIteration as done:
            return done.value
        kept = block.filter(pc.is_in(block[key].cast(pa.string()), wanted))
        if kept.num_rows:
            yield kept


class ShardsSource(Datasource):
    """Every row of the Parquet shards `files` ((URI, size) from the listing), in blocks of
    `rows_per_block` rows (only those of `keys`, when given)."""

    def __init__(
        self,
        files: list[tuple[str, int]],
        key: str,
        rows_per_block: int,
        s3: sfs.S3Options,
        tally=None,
        keys: frozenset[str] | None = None,
    ):
        super().__init__()
        self.files, self.key, self.rows_per_block, self.s3, self.tally = files, key, rows_per_block, s3, tally
        self.keys = keys

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        bounds = np.array_split(np.arange(len(self.files)), max(1, min(parallelism, len(self.files))))
        groups = [self.files[b[0] : b[-1] + 1] for b in bounds if len(b)]
        read = functools.partial(
            _read_shards, key=self.key, rows_per_block=self.rows_per_block, s3=self.s3, tally=self.tally, keys=self.keys
        )
        return [
            ReadTask(
                functools.partial(read, group), BlockMetadata(None, None, None, input_files=tuple(u for u, _ in group))
            )
            for group in groups
        ]


def _read_items(table: pa.Table, first: int, tally):
    if tally is not None:
        tally.add.remote(f"items:{first}", rows_read=table.num_rows)
    yield table


class ItemsSource(Datasource):
    """Work items a job planned on the driver (one row per file to ingest, file to export,
    mixture to make), and the items its planner found to be errors already, in blocks of
    `rows_per_block` rows."""

    def __init__(self, items: pa.Table, errors: list[ErrorRow], key: str, rows_per_block: int, tally=None):
        super().__init__()
        items = with_private_columns(items)
        if errors:
            items = pa.concat_tables([items, error_table(key, errors)], promote_options="permissive")
        self.items, self.rows_per_block, self.tally = items, rows_per_block, tally

    def estimate_inmemory_data_size(self) -> int | None:
        return self.items.nbytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        n, step = self.items.num_rows, self.rows_per_block
        return [
            ReadTask(
                functools.partial(_read_items, self.items.slice(a, step), a, self.tally),
                BlockMetadata(min(step, n - a), None, None, input_files=None),
            )
            for a in range(0, n, step)
        ]
