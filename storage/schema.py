"""Shard schemas (docs/architecture.md, "Data contracts"), the row checks that route bad rows to `_errors`, and fast
codes <-> numpy/Arrow conversion.

Code shard: one row per clip, columns of `CODE_SHARD_SCHEMA`; any other column passes
through every job untouched. Separated shard: the input row's columns (same `id`) plus
`prompt` and the curation scores, one row per (clip, prompt). Errors table: one row per
rejected row or unreadable file, written beside the output under `_errors/`.

Codes from `.dac` files (`storage.dacfile`) keep what DAC's `decompress` needs in the
`dac_*` columns of `DAC_COLUMNS`, so an exported `.dac` decodes like the original:

- a DAC file holds codes [channels, n_codebooks, n_frames]; each channel is its own row
  (`dac_channel` k of `dac_channels`; id `<file id>#ch<k>` when there are several), since
  the separator is mono; `dacfile.dac_from_rows` stacks them back.
- `n_samples` is the length at the codec rate; `dac_original_length`/`dac_sample_rate`
  are DAC's own (input rate, used for the final resample and trim); `dac_input_db`
  restores the input loudness; `dac_version` is checked by DAC on load.
- `dac_padding=True` (what `compress` writes when the clip fits in one window): the codes
  are one continuous sequence at the codec hop; separate them as one sequence.
- `dac_padding=False` (chunked mode, clips longer than `win_duration`): the codes are
  consecutive independent windows of `dac_chunk_length` frames. Each window was encoded
  without padding from a slice of audio that overlaps its neighbours by the codec's
  receptive field, and decodes to fewer samples than its frames span (16 kHz model:
  the CLI's 5 s windows give 234 frames -> 69346 samples, not 234*320; 1 s windows give
  34 -> 5346), so windows overlap in time and do not share a frame grid. They must NOT
  be treated as one continuous sequence: the separation job cuts at chunk boundaries
  (`separable_segments`) and keeps the chunk layout, which DAC decodes chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

CODES_TYPE = pa.list_(pa.list_(pa.uint16()))

CODE_SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # unique clip id within the dataset
        pa.field("codes", CODES_TYPE),  # [n_codebooks][n_frames] codec codes
        pa.field("codec", pa.string()),  # codec identity, e.g. "dac_16khz"
        pa.field("sample_rate", pa.int32()),  # codec sample rate
        pa.field("n_samples", pa.int64()),  # clip length in samples at `sample_rate`
    ]
)

DAC_COLUMNS = pa.schema(
    [
        pa.field("dac_version", pa.string()),
        pa.field("dac_chunk_length", pa.int32()),  # frames per independently decoded chunk
        pa.field("dac_padding", pa.bool_()),  # False: chunks are overlapping windows (see above)
        pa.field("dac_input_db", pa.float32()),  # input loudness, restored on decode
        pa.field("dac_channels", pa.int32()),  # channels of the source file
        pa.field("dac_channel", pa.int32()),  # which channel this row holds
        pa.field("dac_original_length", pa.int64()),  # samples at dac_sample_rate
        pa.field("dac_sample_rate", pa.int32()),  # the source audio's sample rate
    ]
)
DAC_SHARD_SCHEMA = pa.schema(list(CODE_SHARD_SCHEMA) + list(DAC_COLUMNS))

SCORE_COLUMNS = pa.schema(
    [
        pa.field("prompt", pa.string()),
        pa.field("stem", pa.string()),  # "target" (what the prompt names) or "residual" (everything else)
        pa.field("energy_kept", pa.float32()),  # fraction of latent energy the stem's mask kept
        pa.field("mask_mean", pa.float32()),  # mean mask value over the clip
        pa.field("active_fraction", pa.float32()),  # share of the clip where the prompt's source sounds
        pa.field("active_spans", pa.list_(pa.list_(pa.float64()))),  # [[start_s, end_s], ...] of it
    ]
)
SEPARATED_SHARD_SCHEMA = pa.schema(list(CODE_SHARD_SCHEMA) + list(SCORE_COLUMNS))

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # null when the whole file was unreadable
        pa.field("source", pa.string()),  # input file (shard, .dac or audio file)
        pa.field("stage", pa.string()),  # job that rejected it, e.g. "separate"
        pa.field("prompt", pa.string()),  # null unless one prompt failed
        pa.field("reason", pa.string()),
        pa.field("key", pa.string()),  # the input's key in its job: what resume and --retry-errors match
    ]
)

REQUIRED_COLUMNS = tuple(CODE_SHARD_SCHEMA.names)
_MAX_INT32 = 2**31 - 1


class CodecSpec(Protocol):
    """What a row must match to be separable by one codec: the fields of the one codec
    identity type, `codecsep_core.CodecInfo`, that storage checks (storage does not import
    the core, so it names them here)."""

    @property
    def name(self) -> str: ...

    @property
    def n_codebooks(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...

    @property
    def sample_rate(self) -> int: ...


class MalformedCodes(ValueError):
    """A `codes` value that is not a rectangular [n_codebooks][n_frames] integer array."""


@dataclass(frozen=True)
class CheckedRow:
    """A row's codes as uint16 [n_codebooks, n_frames] when valid, else why not."""

    codes: np.ndarray | None
    reason: str | None


# ---------------------------------------------------------------- codes -> numpy


def _integer_matrix(arr: np.ndarray) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        raise MalformedCodes(f"malformed codes: dtype {arr.dtype}, expected integers")
    if arr.ndim != 2:
        raise MalformedCodes(f"malformed codes: {arr.ndim} dimensions, expected 2")
    return arr


def _stack_codebooks(codebooks: Sequence[Any]) -> np.ndarray:
    """Per-codebook sequences (Ray's object arrays, Python lists) -> [n_codebooks, n_frames]."""
    rows = []
    for cb in codebooks:
        if cb is None:
            raise MalformedCodes("malformed codes: null codebook")
        try:
            row = np.asarray(cb)
            rows.append(np.asarray(row.tolist()) if row.dtype == object else row)
        except ValueError as e:
            raise MalformedCodes(f"malformed codes: {e}") from e
    if not rows:
        return np.zeros((0, 0), dtype=np.uint16)
    if any(r.ndim != 1 for r in rows):
        raise MalformedCodes("malformed codes: a codebook is not a flat sequence")
    if len({len(r) for r in rows}) > 1:
        raise MalformedCodes("malformed codes: ragged codebooks")
    if any(r.dtype == object for r in rows):
        raise MalformedCodes("malformed codes: non-numeric values")
    return _integer_matrix(np.stack(rows))


def codes_to_numpy(value: Any) -> np.ndarray:
    """One row's codes -> integer ndarray [n_codebooks, n_frames], from any form a batch
    gives it: a pyarrow list scalar, a 2-D ndarray, a numpy object array of codebook
    arrays (Ray Data's numpy batches) or nested lists. Raises `MalformedCodes`."""
    if isinstance(value, pa.Scalar):
        if not value.is_valid:
            raise MalformedCodes("malformed codes: null")
        inner = value.values
        row = pa.ListArray.from_arrays(pa.array([0, len(inner)], pa.int32()), inner)
        result = _arrow_rows(row)[0]
        if isinstance(result, str):
            raise MalformedCodes(result)
        return result
    if value is None:
        raise MalformedCodes("malformed codes: null")
    if isinstance(value, np.ndarray) and value.dtype != object:
        return _integer_matrix(value)
    if isinstance(value, (np.ndarray, list, tuple)):
        return _stack_codebooks(list(value))
    raise MalformedCodes(f"malformed codes: {type(value).__name__}")


def _per_row(flags: np.ndarray, outer_off: np.ndarray) -> np.ndarray:
    """How many of each row's codebooks have a True flag."""
    csum = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return csum[outer_off[1:]] - csum[outer_off[:-1]]


def _arrow_rows(column: pa.Array) -> list[np.ndarray | str]:
    """A list<list<int>> array -> per row a zero-copy [n_codebooks, n_frames] view or a
    reason; every check is vectorised over the offsets (no loop over frames)."""
    t = column.type
    is_list = pa.types.is_list
    if not (is_list(t) or pa.types.is_large_list(t)) or not (
        is_list(t.value_type) or pa.types.is_large_list(t.value_type)
    ):
        return [f"malformed codes: column type {t}, expected list<list<uint16>>"] * len(column)
    if not pa.types.is_integer(t.value_type.value_type):
        return [f"malformed codes: value type {t.value_type.value_type}, expected integers"] * len(column)
    # Slice the backing buffers to this array's own rows; offsets then start at 0.
    outer_off = column.offsets.to_numpy()
    inner = column.values.slice(outer_off[0], outer_off[-1] - outer_off[0])
    inner_off = inner.offsets.to_numpy()
    flat = inner.values.slice(inner_off[0], inner_off[-1] - inner_off[0])
    outer_off, inner_off = outer_off - outer_off[0], inner_off - inner_off[0]

    lengths = np.diff(inner_off)
    first_of_row = np.repeat(outer_off[:-1], np.diff(outer_off))
    ragged = _per_row(lengths != lengths[first_of_row], outer_off)
    null_cb = _per_row(inner.is_null().to_numpy(zero_copy_only=False), outer_off)
    null_values = np.zeros(len(column), np.int64)
    if flat.null_count:
        csum = np.concatenate([[0], np.cumsum(flat.is_null().to_numpy(zero_copy_only=False), dtype=np.int64)])
        null_values = _per_row(csum[inner_off[1:]] > csum[inner_off[:-1]], outer_off)
        flat = flat.fill_null(0)
    values = flat.to_numpy(zero_copy_only=False)
    row_null = column.is_null().to_numpy(zero_copy_only=False)

    out: list[np.ndarray | str] = []
    for i in range(len(column)):
        a, b = outer_off[i], outer_off[i + 1]
        if row_null[i]:
            out.append("malformed codes: null")
        elif null_cb[i]:
            out.append("malformed codes: null codebook")
        elif ragged[i]:
            out.append("malformed codes: ragged codebooks")
        elif null_values[i]:
            out.append("malformed codes: null values")
        elif a == b:
            out.append(np.zeros((0, 0), dtype=values.dtype))
        else:
            start, n_frames = inner_off[a], lengths[a]
            out.append(values[start : start + (b - a) * n_frames].reshape(b - a, n_frames))
    return out


def _column_rows(column: Any) -> list[np.ndarray | str]:
    if isinstance(column, pa.ChunkedArray):
        return [r for chunk in column.chunks for r in _arrow_rows(chunk)]
    if isinstance(column, pa.Array):
        return _arrow_rows(column)
    out: list[np.ndarray | str] = []
    for value in column:
        try:
            out.append(codes_to_numpy(value))
        except MalformedCodes as e:
            out.append(str(e))
    return out


def codes_column_to_numpy(column: Any) -> list[np.ndarray]:
    """A whole `codes` column (pyarrow array, numpy object array, list) -> one integer
    array [n_codebooks, n_frames] per row; arrays from Arrow are read-only zero-copy
    views. Raises `MalformedCodes` naming the first bad row."""
    rows = _column_rows(column)
    for i, r in enumerate(rows):
        if isinstance(r, str):
            raise MalformedCodes(f"row {i}: {r}")
    return rows  # type: ignore[return-value]


# ---------------------------------------------------------------- numpy -> arrow


def codes_to_arrow(codes: Sequence[np.ndarray]) -> pa.ListArray:
    """Per-row integer arrays [n_codebooks, n_frames] -> a `CODES_TYPE` array, built from
    offsets over one concatenated buffer."""
    arrays = [np.asarray(c) for c in codes]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
            raise MalformedCodes(f"row {i}: codes must be a 2-D integer array, got {a.dtype} {a.shape}")
        if a.size and a.dtype != np.uint16 and (a.min() < 0 or a.max() > np.iinfo(np.uint16).max):
            raise MalformedCodes(f"row {i}: codes do not fit uint16")
    if not arrays:
        return pa.array([], type=CODES_TYPE)
    n_cb = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    n_frames = np.array([a.shape[1] for a in arrays], dtype=np.int64)
    outer = np.concatenate([[0], np.cumsum(n_cb)])
    inner = np.concatenate([[0], np.cumsum(np.repeat(n_frames, n_cb))])
    if inner[-1] > _MAX_INT32:
        raise ValueError(f"{inner[-1]} codes do not fit one Arrow list array: write smaller batches")
    values = np.concatenate([a.astype(np.uint16, copy=False).ravel() for a in arrays])
    codebooks = pa.ListArray.from_arrays(pa.array(inner.astype(np.int32)), pa.array(values))
    return pa.ListArray.from_arrays(pa.array(outer.astype(np.int32)), codebooks)


def _to_arrow(values: Any, type_: pa.DataType | None) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if type_ is None else values.cast(type_)
    if type_ == CODES_TYPE:
        return codes_to_arrow([codes_to_numpy(v) for v in values])
    if isinstance(values, np.ndarray) and values.ndim > 1:
        values = list(values)  # a Ray tensor column: one list per row
    return pa.array(values, type=type_)


def table_from_columns(columns: Mapping[str, Any], schema: pa.Schema) -> pa.Table:
    """Columns (a Ray numpy batch, lists, Arrow arrays) -> a table with `schema`'s columns
    first, in its types, then every other column as given."""
    missing = [name for name in schema.names if name not in columns]
    if missing:
        raise KeyError(f"missing column(s): {', '.join(missing)}")
    names = list(schema.names) + [n for n in columns if n not in schema.names]
    arrays = [_to_arrow(columns[n], schema.field(n).type if n in schema.names else None) for n in names]
    return pa.table(dict(zip(names, arrays)))


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Row dicts -> table as in `table_from_columns`; a key absent from a row is null."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    if not rows:
        names = list(schema.names)
    return table_from_columns({n: [row.get(n) for row in rows] for n in names}, schema)


# ---------------------------------------------------------------- row checks


def _reason(fields: Mapping[str, Any], codes: np.ndarray | str, expected: CodecSpec) -> str | None:
    if not fields["id"]:
        return "missing id"
    if fields["codec"] != expected.name:
        return f"wrong codec {fields['codec']!r}, expected {expected.name!r}"
    if fields["sample_rate"] != expected.sample_rate:
        return f"wrong sample_rate {fields['sample_rate']}, expected {expected.sample_rate}"
    if fields["n_samples"] is None or fields["n_samples"] < 0:
        return f"invalid n_samples {fields['n_samples']}"
    if isinstance(codes, str):
        return codes
    if codes.shape[0] != expected.n_codebooks:
        return f"wrong number of codebooks: {codes.shape[0]}, expected {expected.n_codebooks}"
    if codes.shape[1] == 0:
        return "empty clip (0 frames)"
    hi = int(codes.max())
    if hi >= expected.codebook_size:
        return f"codes out of range [0, {expected.codebook_size}): max {hi}"
    lo = int(codes.min())
    if lo < 0:
        return f"codes out of range [0, {expected.codebook_size}): min {lo}"
    return None


def _checked(fields: Mapping[str, Any], codes: np.ndarray | str, expected: CodecSpec) -> CheckedRow:
    reason = _reason(fields, codes, expected)
    if reason is not None:
        return CheckedRow(None, reason)
    return CheckedRow(codes.astype(np.uint16, copy=False), None)  # type: ignore[union-attr]


def _missing(names: Any) -> str | None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    return f"missing column(s): {', '.join(missing)}" if missing else None


def validate_row(row: Mapping[str, Any], expected: CodecSpec) -> str | None:
    """Why this code-shard row cannot be separated with `expected`, or None if it can."""
    missing = _missing(row)
    if missing:
        return missing
    try:
        codes: np.ndarray | str = codes_to_numpy(row["codes"])
    except MalformedCodes as e:
        codes = str(e)
    return _reason(row, codes, expected)


def check_batch(batch: pa.Table | pa.RecordBatch | Mapping[str, Any], expected: CodecSpec) -> list[CheckedRow]:
    """Validate every row of a batch (Arrow table or Ray numpy dict) and return its codes
    as uint16 [n_codebooks, n_frames] or the reason it goes to `_errors`."""
    names = batch.schema.names if isinstance(batch, (pa.Table, pa.RecordBatch)) else list(batch)
    n_rows = batch.num_rows if isinstance(batch, (pa.Table, pa.RecordBatch)) else len(next(iter(batch.values()), []))
    missing = _missing(names)
    if missing:
        return [CheckedRow(None, missing)] * n_rows

    def values(name: str) -> list:
        col = batch[name]
        return col.to_pylist() if isinstance(col, (pa.Array, pa.ChunkedArray)) else list(col)

    scalars = {name: values(name) for name in ("id", "codec", "sample_rate", "n_samples")}
    codes = _column_rows(batch["codes"])
    return [_checked({k: v[i] for k, v in scalars.items()}, codes[i], expected) for i in range(n_rows)]


def separable_segments(row: Mapping[str, Any], n_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of a row's codes that must be separated independently:
    the chunks of a chunked (`dac_padding=False`) DAC file, else the whole clip."""
    chunk = row.get("dac_chunk_length")
    if row.get("dac_padding") is False and chunk:
        return [(s, min(s + int(chunk), n_frames)) for s in range(0, n_frames, int(chunk))]
    return [(0, n_frames)]
