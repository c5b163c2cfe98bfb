"""Folders of Parquet shards on any fsspec URI, read as one dataset.

A shard is written whole or not at all (`fs.write_bytes_atomic`), under a name that
depends only on the writer's prefix and the shard's position, so a task that re-runs
after a crash replaces its own shards instead of adding copies. Readers take only
visible `*.parquet` files: temporary names (`.part-...tmp-...`) and side tables
(`_errors/`) are never data. Ray Data's `read_parquet` follows the same convention.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage.fs import S3Options, exists, is_hidden, join, list_files, resolve, write_bytes_atomic
from storage.schema import ERRORS_SCHEMA

log = logging.getLogger(__name__)

ERRORS_DIR = "_errors"


@dataclass(frozen=True)
class ShardOptions:
    """Bounds on one shard file (rows, and bytes of the Parquet file), so that a reader
    can hold a shard in memory and a writer puts it in one request."""

    max_rows: int = 10_000
    max_bytes: int = 128 * 2**20
    compression: str = "zstd"


def shard_name(prefix: str, index: int) -> str:
    return f"part-{prefix}-{index:05d}.parquet"


class ShardWriter:
    """Buffers tables and writes them as bounded shards `part-<prefix>-<n>.parquet` under
    `uri`. Use one prefix per concurrent writer. Rows still buffered when the `with`
    block raises are dropped, not written: the task that failed is re-run."""

    def __init__(self, uri: str, prefix: str, options: ShardOptions = ShardOptions(), s3: S3Options | None = None):
        if not prefix or "/" in prefix or is_hidden(prefix):
            raise ValueError(f"shard prefix {prefix!r} must be a plain name not starting with '.' or '_'")
        if options.max_rows < 1 or options.max_bytes < 1:
            raise ValueError(f"shard bounds must be positive: {options}")
        self.uri, self.prefix, self.options, self.s3 = uri, prefix, options, s3
        self.written: list[str] = []
        self._pending: list[pa.Table] = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()

    def _pending_rows(self) -> int:
        return sum(t.num_rows for t in self._pending)

    def _pending_bytes(self) -> int:
        return sum(t.nbytes for t in self._pending)

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if table.num_rows:
            self._pending.append(table)
        while self._pending and (
            self._pending_rows() >= self.options.max_rows or self._pending_bytes() >= self.options.max_bytes
        ):
            self._emit()

    def close(self) -> list[str]:
        """Write what is buffered, then remove this prefix's shards beyond the last one
        written (left by an earlier run of the task that wrote more); -> URIs written."""
        while self._pending:
            self._emit()
        self._remove_stale()
        return self.written

    def _remove_stale(self) -> None:
        fs, folder = resolve(self.uri, self.s3)
        fs.invalidate_cache(folder)
        if not fs.isdir(folder):
            return
        own = re.compile(rf"part-{re.escape(self.prefix)}-(\d+)\.parquet")
        for path in fs.ls(folder, detail=False):
            match = own.fullmatch(posixpath.basename(path))
            if match and int(match.group(1)) >= len(self.written):
                log.info("removing %s, left by an earlier run of writer %r", path, self.prefix)
                fs.rm_file(path)

    def _emit(self) -> None:
        """Write the first shard's worth of buffered rows, keep the rest buffered."""
        buffered = pa.concat_tables(self._pending, promote_options="default")
        row_bytes = max(1, buffered.nbytes // buffered.num_rows)
        n = max(1, min(self.options.max_rows, self.options.max_bytes // row_bytes, buffered.num_rows))
        self._write_shard(buffered.slice(0, n))
        rest = buffered.slice(n)
        self._pending = [rest] if rest.num_rows else []

    def _write_shard(self, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=self.options.compression)
        data = buf.getvalue()
        if len(data) > self.options.max_bytes and table.num_rows > 1:
            half = table.num_rows // 2
            self._write_shard(table.slice(0, half))
            self._write_shard(table.slice(half))
            return
        if len(data) > self.options.max_bytes:
            log.warning(
                "one row is %d bytes, over the shard bound of %d: written alone", len(data), self.options.max_bytes
            )
        uri = join(self.uri, shard_name(self.prefix, len(self.written)))
        write_bytes_atomic(uri, data, self.s3)
        self.written.append(uri)
        log.debug("wrote shard %s (%d rows, %d bytes)", uri, table.num_rows, len(data))


def list_shards(uri: str, s3: S3Options | None = None) -> list[str]:
    """Sorted URIs of the data shards under `uri` (a folder or one .parquet file)."""
    return list_files(uri, (".parquet",), s3)


def read_table(
    uri: str, columns: Sequence[str] | None = None, filter: pc.Expression | None = None, s3: S3Options | None = None
) -> pa.Table:
    """All shards under `uri` as one table (schemas unified: a column missing from some
    shards reads as null there), optionally only `columns` and rows matching `filter`,
    e.g. `pc.field("prompt") == "speech"`. A folder with no shards -> a table with no
    columns; a missing `uri` raises FileNotFoundError."""
    uris = list_shards(uri, s3)
    if not uris:
        return pa.table({})
    dataset = _dataset(uris, s3)
    schema = pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()], promote_options="permissive")
    return dataset.replace_schema(schema).to_table(columns=columns, filter=filter)


def count_rows(shard_uris: Sequence[str], s3: S3Options | None = None) -> int:
    """Rows in these shards (as `list_shards` gives them), from their footers alone."""
    return _dataset(shard_uris, s3).count_rows() if shard_uris else 0


def _dataset(shard_uris: Sequence[str], s3: S3Options | None) -> ds.Dataset:
    """The shards as one pyarrow dataset, on the filesystem of the first."""
    fs, _ = resolve(shard_uris[0], s3)
    return ds.dataset([resolve(u, s3)[1] for u in shard_uris], filesystem=fs, format="parquet")


def write_table_atomic(uri: str, table: pa.Table, s3: S3Options | None = None, compression: str = "zstd") -> None:
    """One Parquet file, written whole (`fs.write_bytes_atomic`): readers never see half of it."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    write_bytes_atomic(uri, buf.getvalue(), s3)


@contextmanager
def _parquet_file(uri: str, s3: S3Options | None) -> Iterator[pq.ParquetFile]:
    """One shard opened for ranged reads: its footer first, then only what is read."""
    fs, path = resolve(uri, s3)
    with fs.open(path, "rb") as f:
        yield pq.ParquetFile(f)


MAGIC = b"PAR1"


def footer_rows(uri: str, size: int, s3: S3Options | None = None) -> int | None:
    """A shard's row count from its footer alone, in two small ranged reads (the length,
    then the footer), never the data; None when the file is not a Parquet file (the
    data's fault). Storage failures raise."""
    fs, path = resolve(uri, s3)
    if size < 12:
        return None
    tail = fs.cat_file(path, start=size - 8, end=size)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != MAGIC or length > size - 12:
        return None
    footer = fs.cat_file(path, start=size - 8 - length, end=size - 8)
    try:
        return pq.read_metadata(pa.BufferReader(MAGIC + footer + tail)).num_rows
    except (pa.ArrowException, OSError):
        return None


def column_names(uri: str, s3: S3Options | None = None) -> list[str]:
    """One shard's columns, from its footer alone."""
    with _parquet_file(uri, s3) as parquet:
        return parquet.schema_arrow.names


class MissingColumns(ValueError):
    """A shard without a column its reader needs."""


def read_present_columns(
    uri: str, wanted: Sequence[str], required: Sequence[str] = (), s3: S3Options | None = None
) -> pa.Table:
    """Those of `wanted` that one shard has (its footer says which), read without the
    rest, so an index or a score table never pulls in the codes. Raises `MissingColumns`
    when any of `required` is absent, and pyarrow's ArrowInvalid when it is not Parquet."""
    with _parquet_file(uri, s3) as parquet:
        names = parquet.schema_arrow.names
        missing = [c for c in required if c not in names]
        if missing:
            raise MissingColumns(f"no {', '.join(map(repr, missing))} column(s)")
        return parquet.read(columns=[c for c in wanted if c in names])


def read_errors(output_uri: str, s3: S3Options | None = None) -> pa.Table:
    """Every error row written beside `output_uri` (none yet: an empty errors table)."""
    errors_uri = join(output_uri, ERRORS_DIR)
    if not exists(errors_uri, s3):
        return ERRORS_SCHEMA.empty_table()
    return read_table(errors_uri, s3=s3)
