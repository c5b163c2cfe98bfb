"""The pipeline's own columns, private to the engine: '_' names never reach a data file.

Rows flow from the sources through the stage to the sink with these beside the data;
jobs never name them: they hand the engine `ErrorRow`s, `StageOutput.done` keys and
`in_folder` tables instead.
"""

from __future__ import annotations

import pyarrow as pa

from jobs.engine.stage import ErrorRow

ERROR = "_error"  # why a row cannot be processed; null on good rows
SOURCE = "_source"  # the input a row came from
ERROR_ID = "_error_id"  # clip id of an error row (null for a file with no rows to name)
ERROR_PROMPT = "_error_prompt"  # prompt an error row is about, if one
DIR = "_dir"  # sub-folder of the output a row is written to
DONE_ONLY = "_done"  # a DIR for a row that only marks its key done (an input that yields nothing): written nowhere
PRIVATE = (ERROR, SOURCE, ERROR_ID, ERROR_PROMPT, DIR)


def in_folder(rows: pa.Table, folder: str | list[str]) -> pa.Table:
    """`rows` bound for a sub-folder of the output (one for all, or one per row), e.g.
    prepare-train's `train/` and `val/`, export's `_manifest/`."""
    folders = [folder] * rows.num_rows if isinstance(folder, str) else folder
    return rows.append_column(DIR, pa.array(folders, pa.string()))


def done_rows(key: str, keys: list[str]) -> pa.Table:
    """Rows that only mark their keys done: inputs that yield no output (written nowhere)."""
    return in_folder(pa.table({key: pa.array(keys, pa.string())}), DONE_ONLY)


def error_table(key: str, errors: list[ErrorRow]) -> pa.Table:
    """Error rows in the pipeline's columns, keyed like the stage's input rows."""
    return pa.table(
        {
            key: pa.array([e.key for e in errors], pa.string()),
            SOURCE: pa.array([e.source for e in errors], pa.string()),
            ERROR: pa.array([e.reason for e in errors], pa.string()),
            ERROR_ID: pa.array([e.clip_id for e in errors], pa.string()),
            ERROR_PROMPT: pa.array([e.prompt for e in errors], pa.string()),
        }
    )


def with_private_columns(rows: pa.Table) -> pa.Table:
    """Good rows with null error columns, as every source and actor passes them on."""
    for name in (ERROR, SOURCE, ERROR_ID):
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.string()))
    return rows
