"""A Ray Data sink for separated shards that routes error rows to `<output>/_errors/`.

It is a file datasink, so Ray Data's row-level checkpointing gives it a two-phase commit:
a pending checkpoint is written before the data file and committed after it, and a
rerun after a crash deletes data files of uncommitted writes (matched by file-name
prefix, recursively, so the `_errors/` file of the same write goes too). Good rows and
error rows of one block share a base name for exactly that reason.
"""
from __future__ import annotations

import io
import posixpath
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource.file_datasink import BlockBasedFileDatasink

ERROR_COLUMN = "_error"  # reason; null on good rows
SOURCE_COLUMN = "_source"  # input file of the row
STAGE = "separate"


class ShardSink(BlockBasedFileDatasink):
    def __init__(self, path: str, *, filesystem, rename_into_place: bool, min_rows_per_file: int | None = None):
        """`rename_into_place`: write a hidden temporary file and rename it (local folders);
        False for object stores, where one PUT is atomic and a rename is a copy."""
        super().__init__(path, filesystem=filesystem, file_format="parquet", min_rows_per_file=min_rows_per_file)
        self._rename = rename_into_place

    def write_block(self, block: BlockAccessor, block_index: int, ctx) -> None:
        from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME

        name = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
        table = block.to_arrow()
        failed = pc.is_valid(table[ERROR_COLUMN])
        good = table.filter(pc.invert(failed)).drop_columns([ERROR_COLUMN, SOURCE_COLUMN])
        bad = table.filter(failed)
        self._put(posixpath.join(self.path, name), good)
        if bad.num_rows:
            self._put(posixpath.join(self.path, "_errors", name), error_table(bad))

    def _put(self, path: str, table: pa.Table) -> None:
        """Whole-file write: object stores publish a PUT atomically; local folders get a
        hidden temporary name and a rename, so no reader ever sees half a shard."""
        if table.num_rows == 0:
            return
        buf = io.BytesIO()
        pq.write_table(table, buf)
        fs = self.filesystem
        parent, base = posixpath.split(path)
        fs.create_dir(parent, recursive=True)
        target = posixpath.join(parent, f".{base}.{uuid.uuid4().hex[:8]}.tmp") if self._rename else path
        with fs.open_output_stream(target) as out:
            out.write(buf.getvalue())
        if target != path:
            fs.move(target, path)


def error_table(rows: pa.Table) -> pa.Table:
    n = rows.num_rows
    return pa.table(
        {
            "id": rows["id"].cast(pa.string()) if "id" in rows.column_names else pa.nulls(n, pa.string()),
            "source": rows[SOURCE_COLUMN].cast(pa.string()),
            "stage": pa.array([STAGE] * n, pa.string()),
            "prompt": pa.nulls(n, pa.string()),
            "reason": rows[ERROR_COLUMN].cast(pa.string()),
        }
    )
