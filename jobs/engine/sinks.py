"""The one Ray Data sink of every stage: output rows to Parquet shards, error rows to `_errors/`.

It is a file datasink, so Ray Data's row-level checkpointing gives it a two-phase commit: a
pending checkpoint is written before the data file and committed after it, and a rerun
after a crash deletes the data files of uncommitted writes (matched by file-name prefix,
recursively under the output folder, so the `_errors/` and sub-folder files of the same
write go too). Every file of one block therefore shares the block's base name, and is
written whole (`storage.fs.write_bytes_atomic`), so no reader sees half a shard.

Columns whose names start with '_' are the pipeline's own (`jobs.engine.columns`) and
never reach a data file. A row's `DIR` value, when the stage sets one (`in_folder`),
names the sub-folder of the output it goes to (prepare-train's `train/` and `val/`,
export's and select's `_manifest/`), with the columns those rows fill (`folder_columns`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockAccessor
from ray.data.datasource.file_datasink import BlockBasedFileDatasink

from jobs.engine.columns import DIR, DONE_ONLY, ERROR, ERROR_ID, ERROR_PROMPT, SOURCE
from storage import fs as sfs
from storage import shards
from storage.schema import ERRORS_SCHEMA


class ShardSink(BlockBasedFileDatasink):
    def __init__(self, output: str, stage: str, key: str, s3: sfs.S3Options, min_rows_per_file: int | None = None):
        fs, path = sfs.pyarrow_filesystem(output, s3)
        super().__init__(
            path,
            filesystem=fs,
            file_format="parquet",
            min_rows_per_file=min_rows_per_file,
            try_create_dir=not sfs.is_object_store(output),
        )  # object stores need no folders
        self.output, self.stage, self.key, self.s3 = output, stage, key, s3

    def write_block(self, block: BlockAccessor, block_index: int, ctx) -> None:
        from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME

        name = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
        table = block.to_arrow()
        failed = pc.is_valid(table[ERROR])
        parts = by_folder(table.filter(pc.invert(failed)))
        for folder, rows in parts.items():
            if folder == DONE_ONLY:
                continue
            others = [t for f, t in parts.items() if f != folder]
            self._put(sfs.join(self.output, folder, name), rows.select(folder_columns(rows, others)))
        self._put(sfs.join(self.output, shards.ERRORS_DIR, name), self.error_table(table.filter(failed)))

    def error_table(self, rows: pa.Table) -> pa.Table:
        n = rows.num_rows

        def column(name: str) -> pa.Array:
            return rows[name].cast(pa.string()) if name in rows.column_names else pa.nulls(n, pa.string())

        stage = pa.array([self.stage] * n, pa.string())
        return pa.Table.from_arrays(
            [column(ERROR_ID), column(SOURCE), stage, column(ERROR_PROMPT), column(ERROR), column(self.key)],
            schema=ERRORS_SCHEMA,
        )

    def _put(self, uri: str, table: pa.Table) -> None:
        if table.num_rows:
            shards.write_table_atomic(uri, table, self.s3)


def public_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if not c.startswith("_")]


def by_folder(rows: pa.Table) -> dict[str, pa.Table]:
    """Rows by the output sub-folder their `DIR` names ("" for the output folder itself)."""
    if DIR not in rows.column_names:
        return {"": rows}
    return {
        folder or "": rows.filter(pc.is_null(rows[DIR]) if folder is None else pc.equal(rows[DIR], folder))
        for folder in rows[DIR].unique().to_pylist()
    }


def folder_columns(rows: pa.Table, others: list[pa.Table]) -> list[str]:
    """The public columns of one folder's rows. A block may hold rows of different kinds
    (select's segments and their manifest entries): a column null throughout these rows
    that other folders' rows fill is theirs, not this folder's."""

    def fills(table: pa.Table, column: str) -> bool:
        return column in table.column_names and table[column].null_count < table.num_rows

    return [c for c in public_columns(rows) if fills(rows, c) or not any(fills(t, c) for t in others)]
